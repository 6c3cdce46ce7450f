"""Resumable, verified downloads into a final path that appears complete or not at all.

- The bytes stream into ``<stem>.part<suffix>`` beside the target (the suffix kept, so the
  file can be checked as what it is); ``<stem>.part<suffix>.json`` records the source, its
  size and the server's validator (ETag or Last-Modified), so a later call resumes with
  ``Range`` and ``If-Range`` (a server that ignores them, or whose file changed, starts over).
- A body cut short, a reset or a timeout resumes at once with ``Range``, up to ``retries``
  times, and so does a 5xx answer; a 4xx answer is final, and so is a body longer than the size
  the server declared (nothing past it is written).
- Ctrl-C keeps the partial file, so running the same command again resumes; any other
  failure removes it.
- ``verify`` runs on the complete file before it is moved into place.

A source is an ``http(s)://`` URL, a ``file://`` URL or a local path (mirrors, air-gapped
machines); a local file is copied the same way.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import CVDVAEError
from ..fileio import sha256_file
from ..progress import ProgressBar

CHUNK = 1 << 20


class DownloadFailed(RuntimeError):
    """The source could not be read completely (network, server): a failure while working."""


class _Transient(Exception):
    """A failure worth resuming from: the connection, not the request, went wrong."""


@dataclass
class Downloaded:
    path: Path
    sha256: str
    size: int
    resumed_from: int  # bytes that were already there from an interrupted call


def partial_paths(target: Path) -> tuple[Path, Path]:
    part = target.with_name(f"{target.stem}.part{target.suffix}")
    return part, part.with_name(part.name + ".json")


def download(source: str, target: Path, *, verify: Callable[[Path], None], retries: int = 3,
             timeout: float = 30.0, progress: bool = True, backoff: float = 0.5) -> Downloaded:
    """Fetch ``source`` into ``target`` (whose folder must exist); see the module docstring."""
    part, state_file = partial_paths(target)
    state = _resume_state(source, part, state_file)
    resumed_from = part.stat().st_size if state else 0
    try:
        size = _fetch(source, part, state_file, state, retries, timeout, progress, backoff)
        verify(part)
        digest = sha256_file(part)
        os.replace(part, target)
    except KeyboardInterrupt:
        kept = part.stat().st_size if part.exists() else 0
        print(f"download interrupted: {kept / 2**20:.1f} MiB kept in {part}; run the same command to resume",
              file=sys.stderr)
        raise
    except BaseException:
        part.unlink(missing_ok=True)
        state_file.unlink(missing_ok=True)
        raise
    state_file.unlink(missing_ok=True)
    return Downloaded(target, digest, size, resumed_from)


def _resume_state(source: str, part: Path, state_file: Path) -> dict[str, Any] | None:
    """What an interrupted call left for this same source, or None (and no stale partial file)."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = None
    if state and state.get("source") == source and part.is_file():
        return state
    part.unlink(missing_ok=True)
    state_file.unlink(missing_ok=True)
    return None


def _fetch(source: str, part: Path, state_file: Path, state: dict | None, retries: int, timeout: float,
           progress: bool, backoff: float) -> int:
    if not source.startswith(("http://", "https://")):
        return _copy_local(source, part, progress)
    validator = (state or {}).get("validator")
    failures = 0
    while True:
        start = part.stat().st_size if part.exists() else 0
        try:
            return _stream(source, part, state_file, start, validator, timeout, progress)
        except _Transient as err:
            failures += 1
            if failures > retries:
                raise DownloadFailed(f"{source}: {err}; gave up after {retries} retries") from None
            time.sleep(backoff * 2 ** (failures - 1))
        validator = json.loads(state_file.read_text()).get("validator") if state_file.is_file() else None


def _stream(url: str, part: Path, state_file: Path, start: int, validator: str | None, timeout: float,
            progress: bool) -> int:
    """One request: append to ``part`` from ``start``; returns the full size when complete."""
    request = urllib.request.Request(url, headers={"User-Agent": "cvdvae", "Accept-Encoding": "identity"})
    if start:
        request.add_header("Range", f"bytes={start}-")
        if validator:
            request.add_header("If-Range", validator)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code >= 500:
            raise _Transient(f"the server answered {err.code} {err.reason}") from None
        raise CVDVAEError(f"{url}: the server answered {err.code} {err.reason}; check the URL") from None
    except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        raise _Transient(f"could not connect ({reason})") from None
    with response:
        if response.status != 206:
            start = 0  # the server sent the whole file (it ignores Range, or the file changed)
        size = _full_size(response, start)
        new_validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
        state_file.write_text(json.dumps({"source": url, "size": size, "validator": new_validator}))
        # Unbuffered, and read1 (what has arrived, not a full chunk): every byte received is on disk,
        # so an interruption keeps all of it.
        with open(part, "r+b" if start else "wb", buffering=0) as f, ProgressBar(
                size, "bytes", initial=start, disable=not progress) as bar:
            f.seek(start)
            f.truncate()
            received = start
            try:
                while chunk := response.read1(CHUNK):
                    if size is not None and received + len(chunk) > size:
                        raise DownloadFailed(f"{url}: the server sent more than the {size:,} bytes it declared")
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (http.client.IncompleteRead, ConnectionError, TimeoutError, socket.timeout) as err:
                raise _Transient(f"the connection broke after {received:,} bytes ({type(err).__name__})") from None
    if size is not None and received < size:
        raise _Transient(f"the server sent {received:,} of {size:,} bytes")
    return received


def _full_size(response: Any, start: int) -> int | None:
    """The whole file's size: from Content-Range on a 206, Content-Length on a 200."""
    content_range = response.headers.get("Content-Range", "")
    if start and "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return start + int(length) if length is not None else None


def _copy_local(source: str, part: Path, progress: bool) -> int:
    path = Path(source[len("file://"):] if source.startswith("file://") else source).expanduser()
    if not path.is_file():
        raise CVDVAEError(f"{path}: no such file (a source is a URL or a local file)")
    size = path.stat().st_size
    with open(path, "rb") as src, open(part, "wb") as dst, ProgressBar(size, "bytes", disable=not progress) as bar:
        while chunk := src.read(CHUNK):
            dst.write(chunk)
            bar.update(len(chunk))
    return size
