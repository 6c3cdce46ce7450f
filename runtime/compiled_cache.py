"""What one start derives from an export folder and keeps for the next: compiled engines, and the
sha256 of a file already checked.

Where: ``<export folder>/cache/`` when the folder is writable, else
``$CVDVAE_HOME/cache/<digest of the folder's path>/`` (a read-only or shared installation).

An entry is one file, written atomically: a line naming the format, a JSON line with the entry's
key (everything the payload depends on: the graph's sha256, the engine's version, the CPU, the
settings compiled in) and the payload's size and sha256, then the payload. It is used only when
all of that matches; anything else in its place (truncated, bytes changed, made for another key)
is said once, in words, so that the caller compiles again and replaces it.

A file's sha256 is remembered beside its stamp (device, inode, size, mtime and ctime in ns) and
taken again only when the stamp changes: every write through the file system moves the ctime,
which no one can set back. A stamp younger than ``SETTLED_S`` is not remembered, since a second
write within one tick of the file system's clock would leave it unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cvdvae.fileio import atomic_path, sha256_file
from cvdvae.hub.home import cvdvae_home

CACHE_NAME = "cache"
GRAPH = "model.onnx"  # the key's field holding the graph's sha256
MAGIC = b"cvdvae compiled entry 1\n"
MAX_HEADER = 1 << 16
SETTLED_S = 2.0


def cache_folder(folder: Path) -> Path | None:
    """Where ``folder``'s derived files live: its own ``cache/`` when writable, else one under
    ``$CVDVAE_HOME``; None when neither can be written."""
    resolved = Path(folder).resolve()
    home = cvdvae_home() / CACHE_NAME / hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
    for place in (resolved / CACHE_NAME, home):
        if _writable(place):
            return place
    return None


def _writable(place: Path) -> bool:
    try:
        place.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=place, prefix=".probe-"):
            return True
    except OSError:
        return False


def entry_path(folder: Path, engine: str, key: dict[str, str]) -> Path:
    """Where ``engine``'s entry for ``key`` lives: one file per engine version, CPU and settings, so that
    machines sharing a folder keep theirs side by side; not one per graph (``GRAPH``): a folder holds
    one graph, and a re-exported graph's entry replaces its predecessor's."""
    named = json.dumps({**key, GRAPH: None}, sort_keys=True)
    return folder / f"{engine}-{hashlib.sha256(named.encode()).hexdigest()[:16]}.entry"


def rebuilt_note(what: str, entry: Path, why: str | None, kept: str | None, again: str) -> str | None:
    """The one note of a start that could not use the entry (``why``) or not keep its own (``kept``)."""
    if why:
        return f"{what} kept in {entry} {why}: {again}"
    return kept and f"{what} {kept}"


def read_entry(path: Path, key: dict[str, str], mapped: bool = False) -> tuple[bytes | np.ndarray | None, str | None]:
    """The entry's payload when it is whole and was made for ``key``, else None and why not (None
    too when there is no entry at all). As bytes, or ``mapped``: a private copy-on-write mapping of
    the file (a uint8 array) whose pages are read when first used (bytes where the file system
    cannot map it). A mapping outlives the entry's replacement: entries are replaced by renaming,
    never rewritten in place."""
    try:
        with open(path, "rb") as f:
            before = os.fstat(f.fileno())
            header, offset = _header(f.read(len(MAGIC) + MAX_HEADER))
            if header is None:
                return None, "is not a cvdvae cache entry (or its header is damaged)"
            if header["key"] != key:
                other = header["key"]
                fields = sorted(name for name in key.keys() | other.keys() if key.get(name) != other.get(name))
                return None, f"was made for another {', '.join(fields)}"
            size = before.st_size - offset
            if size != header["size"]:
                return None, (f"is {'truncated' if size < header['size'] else 'longer than its header says'} "
                              f"({size:,} bytes where its header says {header['size']:,})")
            f.seek(offset)
            payload = _mapped(f, offset, size) if mapped else f.read(size)
            if len(payload) != size or _stamp(os.fstat(f.fileno())) != _stamp(before):
                return None, "changed while it was read"
    except FileNotFoundError:
        return None, None
    except OSError as err:
        return None, f"cannot be read ({err.strerror or err})"
    digest = remembered_sha256(path, path.parent, lambda: hashlib.sha256(payload).hexdigest(), _stamp(before))
    if digest != header["sha256"]:
        return None, "is damaged (its sha256 does not match)"
    return payload, None


def _mapped(f: Any, offset: int, size: int) -> bytes | np.ndarray:
    try:
        return np.memmap(f, np.uint8, "c", offset=offset, shape=(size,)) if size else np.zeros(0, np.uint8)
    except (OSError, ValueError):  # a file system without mmap
        f.seek(offset)
        return f.read(size)


def _header(head: bytes) -> tuple[dict[str, Any] | None, int]:
    """The header of an entry that starts with ``head``, and where its payload starts."""
    end = head.find(b"\n", len(MAGIC))
    if not head.startswith(MAGIC) or end < 0:
        return None, 0
    try:
        header = json.loads(head[len(MAGIC):end])
    except ValueError:
        return None, 0
    fields = {"key": dict, "size": int, "sha256": str}
    whole = isinstance(header, dict) and all(isinstance(header.get(name), kind) for name, kind in fields.items())
    return (header, end + 1) if whole else (None, 0)


def write_entry(path: Path, key: dict[str, str], payload: bytes | memoryview) -> str | None:
    """Keep ``payload`` under ``key`` at ``path`` (atomically); None, or why it could not be kept."""
    header = {"key": key, "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n")
            f.write(payload)
    except OSError as err:
        return f"could not be kept in {path} ({err.strerror or err}): the next start makes it again"
    return None


def remembered_sha256(path: Path, cache: Path | None, compute: Callable[[], str] | None = None,
                      stamp: list[int] | None = None) -> str:
    """``path``'s sha256 (by ``compute``; by default, hashing the file): the one remembered in
    ``cache`` while the file's stamp is the one it was remembered with, else computed afresh and
    remembered. ``stamp``: the stamp of the bytes ``compute`` hashes, when the caller read them
    (unchanged from the start of its read to its end)."""
    record = None if cache is None else cache / f"{path.name}.sha256.json"
    current = stamp or _stamp(os.stat(path))
    try:
        known = json.loads(record.read_text()) if record else None
    except (OSError, ValueError):
        known = None
    if isinstance(known, dict) and known.get("stamp") == current and isinstance(known.get("sha256"), str):
        return known["sha256"]
    digest = compute() if compute else sha256_file(path)
    unchanged = stamp is not None or current == _stamp(os.stat(path))
    if record is not None and unchanged and time.time_ns() - current[4] > SETTLED_S * 1e9:
        try:
            with atomic_path(record) as tmp:
                tmp.write_text(json.dumps({"stamp": current, "sha256": digest}))
        except OSError:
            pass  # remembering is an optimisation only
    return digest


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def tensorrt_timing_cache(tensorrt_version: str, gpu: str, compute_capability: str) -> Path:
    """The default timing cache of one TensorRT version on one kind of GPU (``$CVDVAE_HOME``)."""
    name = "-".join("".join(c if c.isalnum() or c in "._" else "_" for c in part)
                    for part in (tensorrt_version, gpu, f"sm{compute_capability}"))
    return cvdvae_home() / CACHE_NAME / "tensorrt" / f"timing-{name}.cache"
