"""Fetch the MTCNN face detector once, from PyPI, as three ONNX graphs (``cvdvae fetch mtcnn``).

The P-, R- and O-Net weights ship in the ``facenet-pytorch==2.6.0`` wheel (MIT licence) as
``facenet_pytorch/data/{pnet,rnet,onet}.pt``, torch state dicts. The wheel and each member
must match the sha256 values pinned below; the members are read by ``cvdvae.pt_reader`` (a
restricted unpickler: no code runs, no torch needed), checked key by key and shape by shape
and against the pinned digests of their weights, built into ONNX graphs by
``cvdvae.hub.mtcnn_graphs`` (no onnx package needed) and written, atomically, as the folder
``$CVDVAE_HOME/mtcnn``:

    pnet.onnx, rnet.onnx, onet.onnx    the graphs (inputs and outputs: cvdvae.hub.mtcnn_graphs),
                                       byte for byte the sha256s pinned below
    mtcnn.json                         where they came from (requirement, sha256s, digests, format)
    facenet_pytorch-2.6.0-...whl       the verified wheel (1.9 MB), so --overwrite re-makes
                                       the graphs without a download

So the runtime install (numpy and ONNX Runtime, no torch, no onnx) fetches and checks the
detector. ``folder_ok`` checks a present folder: the record's format, the wheel's sha256 and
every graph's bytes. A folder made by an older format of the graphs (``mtcnn_graphs.FORMAT``)
with its verified wheel is re-made from that wheel once, with a note (``upgrade``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CVDVAEError, WeightsError
from ..fileio import atomic_folder, sha256_file
from ..pt_reader import read_state_dict
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
# mtcnn_graphs.weights_digest of each state dict (torch.load's arrays): what the conversion must give
DIGESTS = {
    "pnet": "00aaf4dca09771bb22f1ead683799ec69cf8568ddd04a1014e8f8e71f31d0e5a",
    "rnet": "0cdaa97d42a1598fb73910aa3ab455aaf92581e508069bdf64c359ade80ed7f0",
    "onet": "ec9528e3eabd30f0fafb968941ceeccca1f4353a9a17f03fe0eec39d91b069f9",
}
# sha256 of each graph mtcnn_graphs.build makes from those weights: what a present folder must hold
GRAPHS = {
    "pnet": "fe45f5b6a49fedd6a3a9cfae6299a0d2cc22a61435b60f2971cbee660754260a",
    "rnet": "64535ff2cd3278b3c1ee8f7fa39e8bdc89216011a06e58a38be27639f1447c0e",
    "onet": "f9a618d7e4a182641412d6335fb8cc56cc954d36e662cadea8d9b102f661c2cc",
}
MAX_MEMBER_BYTES = 8 << 20
RECORD = "mtcnn.json"


def state_dict(data: bytes, net: str) -> dict[str, np.ndarray]:
    """One ``.pt`` member -> float32 numpy arrays, with exactly the keys and shapes ``net`` needs."""
    loaded = read_state_dict(data, f"{net}.pt")
    want = mtcnn_graphs.shapes(net)
    if set(loaded) != set(want):
        raise WeightsError(f"{net}.pt has unexpected keys: missing {sorted(set(want) - set(loaded))}, "
                           f"extra {sorted(set(loaded) - set(want))}")
    for name, shape in want.items():
        if loaded[name].shape != shape:
            raise WeightsError(f"{net}.pt: {name} has shape {loaded[name].shape}, not {shape}")
        if not np.isfinite(loaded[name]).all():
            raise WeightsError(f"{net}.pt: {name} holds NaN or Inf")
    return {name: loaded[name] for name in want}


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


def graphs(wheel: Path) -> dict[str, bytes]:
    """The three graphs, serialized, from ``wheel`` (verified), each checked against its pinned sha256."""
    out = {}
    for net, weights in read_wheel(wheel).items():
        out[net] = mtcnn_graphs.build(net, weights)
        if (got := hashlib.sha256(out[net]).hexdigest()) != GRAPHS[net]:
            raise CVDVAEError(f"the {net} graph built here has sha256 {got}, not the pinned {GRAPHS[net]}; "
                              f"this cvdvae's {mtcnn_graphs.FORMAT} graphs are not what it checks for")
    return out


def write_folder(wheel: Path, folder: Path) -> None:
    """Convert ``wheel`` into ``folder``, replacing what is there only once the new folder is complete."""
    built = graphs(wheel)
    record = {"format": mtcnn_graphs.FORMAT, "requirement": REQUIREMENT, "licence": "MIT (facenet-pytorch)",
              "wheel": {"file": WHEEL, "sha256": WHEEL_SHA256},
              "members": {member: sha for member, sha in MEMBERS.values()},
              "weights_digests": DIGESTS, "graphs": mtcnn_graphs.FILES, "graph_sha256s": GRAPHS,
              "normalisation": "(x - 127.5) / 128, RGB, NCHW float32"}
    with atomic_folder(folder, overwrite=True) as tmp:
        for net, file in mtcnn_graphs.FILES.items():
            (tmp / file).write_bytes(built[net])
        shutil.copyfile(wheel, tmp / WHEEL)
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")


def made_as(folder: Path) -> str | None:
    """The graph format ``folder``'s record names, or None without a readable record."""
    try:
        return json.loads((folder / RECORD).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def folder_ok(folder: Path) -> bool:
    """Whether ``folder`` holds the verified wheel and, byte for byte, the graphs this code builds from it."""
    try:
        return (made_as(folder) == mtcnn_graphs.FORMAT and sha256_file(folder / WHEEL) == WHEEL_SHA256
                and all(sha256_file(folder / file) == GRAPHS[net] for net, file in mtcnn_graphs.FILES.items()))
    except OSError:  # a missing file means "make it again"
        return False


def upgrade(folder: Path) -> bool:
    """Re-make ``folder`` from its kept wheel if an older cvdvae made it (another graph format), saying so.

    Whether it did. The graphs are derived from the pinned wheel alone, so nothing of the user's is lost.
    """
    made = made_as(folder)
    if made is None or made == mtcnn_graphs.FORMAT or not (folder / WHEEL).is_file() \
            or sha256_file(folder / WHEEL) != WHEEL_SHA256:
        return False
    print(f"note: {folder} holds {made} graphs, this cvdvae uses {mtcnn_graphs.FORMAT}; "
          "re-making them from the kept wheel", file=sys.stderr, flush=True)
    write_folder(folder / WHEEL, folder)
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
