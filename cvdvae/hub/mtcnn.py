"""Fetch the MTCNN face detector once, from PyPI, as three ONNX graphs (``cvdvae fetch mtcnn``).

The P-, R- and O-Net weights ship in the ``facenet-pytorch==2.6.0`` wheel (MIT licence) as
``facenet_pytorch/data/{pnet,rnet,onet}.pt``, torch state dicts. The wheel and each member
must match the sha256 values pinned below; the members are read with
``torch.load(weights_only=True)`` (no code runs), checked key by key and shape by shape,
built into ONNX graphs (``cvdvae.hub.mtcnn_graphs``) and written, atomically, as the folder
``$CVDVAE_HOME/mtcnn``:

    pnet.onnx, rnet.onnx, onet.onnx    the graphs (inputs and outputs: cvdvae.mtcnn_graphs)
    mtcnn.json                         where they came from (requirement, sha256s, digests)
    facenet_pytorch-2.6.0-...whl       the verified wheel (1.9 MB), so --overwrite re-makes
                                       the graphs without a download

``folder_ok`` checks a present folder without torch: the wheel's sha256, and the weights
inside each graph against the pinned digests (``mtcnn_graphs.weights_digest``).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CVDVAEError, WeightsError
from ..fileio import atomic_folder, sha256_file
from . import mtcnn_graphs
from .pypi import pip_download, verify_sha256

# ------------------------------------------------------------------ pins (observed 2026-11-29)
REQUIREMENT = "facenet-pytorch==2.6.0"
WHEEL = "facenet_pytorch-2.6.0-py3-none-any.whl"
WHEEL_SHA256 = "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca"
MEMBERS = {
    "pnet": ("facenet_pytorch/data/pnet.pt", "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"),
    "rnet": ("facenet_pytorch/data/rnet.pt", "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"),
    "onet": ("facenet_pytorch/data/onet.pt", "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"),
}
# mtcnn_graphs.weights_digest of each converted state dict: what a present graph must hold
DIGESTS = {
    "pnet": "00aaf4dca09771bb22f1ead683799ec69cf8568ddd04a1014e8f8e71f31d0e5a",
    "rnet": "0cdaa97d42a1598fb73910aa3ab455aaf92581e508069bdf64c359ade80ed7f0",
    "onet": "ec9528e3eabd30f0fafb968941ceeccca1f4353a9a17f03fe0eec39d91b069f9",
}
MAX_MEMBER_BYTES = 8 << 20
RECORD = "mtcnn.json"


def state_dict(data: bytes, net: str) -> dict[str, np.ndarray]:
    """One ``.pt`` member -> float32 numpy arrays, with exactly the keys and shapes ``net`` needs."""
    import torch  # only conversion needs torch; checking a present folder does not

    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - the unpickler raises many types
        raise WeightsError(f"{net}.pt is not a weights-only torch file ({type(err).__name__}: {err})") from None
    want = mtcnn_graphs.shapes(net)
    if not isinstance(loaded, dict) or set(loaded) != set(want):
        keys = set(loaded) if isinstance(loaded, dict) else set()
        raise WeightsError(f"{net}.pt has unexpected keys: missing {sorted(set(want) - keys)}, "
                           f"extra {sorted(keys - set(want))}")
    out = {}
    for name, shape in want.items():
        t = loaded[name]
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or tuple(t.shape) != shape:
            raise WeightsError(f"{net}.pt: {name} is not a float32 tensor of shape {shape}")
        out[name] = t.numpy().copy()
        if not np.isfinite(out[name]).all():
            raise WeightsError(f"{net}.pt: {name} holds NaN or Inf")
    return out


def read_wheel(wheel: Path) -> dict[str, dict[str, np.ndarray]]:
    """Verify ``wheel`` and its members against the pins; the three state dicts, checked."""
    verify_sha256(wheel, WHEEL_SHA256, f"the {REQUIREMENT} wheel")
    weights = {}
    with zipfile.ZipFile(wheel) as zf:
        for net, (member, sha256) in MEMBERS.items():
            if zf.getinfo(member).file_size > MAX_MEMBER_BYTES:
                raise CVDVAEError(f"{wheel}: {member} is larger than {MAX_MEMBER_BYTES} bytes")
            data = zf.read(member)
            if (got := hashlib.sha256(data).hexdigest()) != sha256:
                raise CVDVAEError(f"{wheel}: {member} has sha256 {got}, not the pinned {sha256}; not loading it")
            weights[net] = state_dict(data, net)
            if (digest := mtcnn_graphs.weights_digest(weights[net])) != DIGESTS[net]:
                raise CVDVAEError(f"{member}: converted weights have digest {digest}, expected {DIGESTS[net]}")
    return weights


def write_folder(wheel: Path, folder: Path) -> None:
    """Convert ``wheel`` into ``folder``, replacing what is there only once the new folder is complete."""
    weights = read_wheel(wheel)
    record = {"format": mtcnn_graphs.FORMAT, "requirement": REQUIREMENT, "licence": "MIT (facenet-pytorch)",
              "wheel": {"file": WHEEL, "sha256": WHEEL_SHA256},
              "members": {member: sha for member, sha in MEMBERS.values()},
              "weights_digests": DIGESTS, "graphs": mtcnn_graphs.FILES,
              "normalisation": "(x - 127.5) / 128, RGB, NCHW float32"}
    with atomic_folder(folder, overwrite=True) as tmp:
        for net, file in mtcnn_graphs.FILES.items():
            (tmp / file).write_bytes(mtcnn_graphs.build(net, weights[net]).SerializeToString())
        shutil.copyfile(wheel, tmp / WHEEL)
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")


def folder_ok(folder: Path) -> bool:
    """Whether ``folder`` holds the verified wheel and the graphs this code builds from it."""
    import onnx

    try:
        if not (folder / RECORD).is_file() or sha256_file(folder / WHEEL) != WHEEL_SHA256:
            return False
        for net, file in mtcnn_graphs.FILES.items():
            weights = mtcnn_graphs.read_weights(onnx.load(str(folder / file)), net)
            if weights is None or mtcnn_graphs.weights_digest(weights) != DIGESTS[net]:
                return False
    except Exception:  # noqa: BLE001 - unreadable means "make it again"
        return False
    return True


def fetch(folder: Path, wheel: Path | None = None) -> dict[str, Any]:
    """Make ``folder`` from ``wheel``, else from the wheel kept there, else from PyPI; says which."""
    if wheel is None and (folder / WHEEL).is_file() and sha256_file(folder / WHEEL) == WHEEL_SHA256:
        wheel = folder / WHEEL
    if wheel is not None:
        write_folder(wheel, folder)
        return {"source": str(wheel), "sha256": WHEEL_SHA256}
    with tempfile.TemporaryDirectory(prefix="cvdvae-mtcnn-") as tmp:
        write_folder(pip_download(REQUIREMENT, WHEEL_SHA256, Path(tmp), sdist=False),
                     folder)
    return {"source": f"PyPI {REQUIREMENT}", "sha256": WHEEL_SHA256}
