"""One request's answer: the messages a model replica streams to the ingress, and the two ways
the ingress writes them for the client, chunk by chunk.

A replica sends first a ``Failure`` (a client mistake or a broken model, found before any
image is returned) or a ``Head``: the record (model, seed, n, temperatures, and a photo's
size and faces), the samples of LR faces or of a photo's faces (with ``summary``: each one's
``Spread``, the mean and standard deviation pictures), and how many whole photos follow; then
each whole photo as one file (PNG, JPEG or WebP: the record's ``photo_format``), as it is made,
and with ``summary`` the whole photos' ``Spread`` after them. ``JsonAnswer`` writes them as one
JSON object with base64 files, ``ZipAnswer`` as a stored zip (the images are compressed already)
written to an unseekable stream; either way no answer is ever whole in memory, only the photo
being sent. Both end with the request's wall time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from typing import Any

from ..images.photo_format import SUFFIXES


@dataclass(frozen=True)
class Failure:
    status: int
    kind: str
    message: str


@dataclass(frozen=True)
class Spread:
    """The samples' mean and their standard deviation map, as PNGs (``runtime.images.summary``)."""

    mean: bytes
    std: bytes

    def as_json(self) -> dict[str, str]:
        return {"mean": base64_text(self.mean).decode(), "std": base64_text(self.std).decode()}


@dataclass(frozen=True)
class Head:
    record: dict[str, Any]            # model, seed, n, temperatures; consistent | size, upscale, faces
    samples: list[bytes]              # LR faces: the n sample PNGs (a photo's whole photos follow the head)
    face_samples: list[list[bytes]]   # a photo: per face, its n sample PNGs
    photos: int                       # whole-photo PNGs that follow
    count: int                        # samples made: n, or faces x n
    batches: list[tuple[int, float]]  # per job: the jobs in its engine batch, its share of the engine time
    spread: Spread | None = None      # LR faces with ``summary``: the samples' spread
    face_spreads: list[Spread] = field(default_factory=list)  # a photo with ``summary``: per face


def fingerprint(message: Head | Failure | Spread | bytes) -> bytes:
    """What identifies a message's content (a ``Head``'s engine batches and timings aside): a
    request run again must give the same fingerprints."""
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(message, Head):
        digest.update(json.dumps([message.record, message.photos, message.count], sort_keys=True).encode())
        parts = [*message.samples, *(png for pngs in message.face_samples for png in pngs),
                 *(half for spread in [message.spread, *message.face_spreads] if spread for half in (spread.mean,
                                                                                                      spread.std))]
    elif isinstance(message, Spread):
        parts = [b"spread", message.mean, message.std]
    elif isinstance(message, Failure):
        parts = [b"failure", repr(message).encode()]
    else:
        parts = [message]
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return type(message).__name__.encode() + digest.digest()


def base64_text(png: bytes) -> bytes:
    return base64.b64encode(png)


class JsonAnswer:
    """``{...record, "faces": [{..., "samples": [...], "mean", "std"}], "samples": ["<base64 PNG>", ...],
    "mean": "<base64 PNG>", "std": "<base64 PNG>", "elapsed_s": s}`` (mean and std with ``summary``:
    of the samples in "samples", and per face of its own)."""

    media_type = "application/json"

    def __init__(self) -> None:
        self.written = 0  # entries of "samples" so far
        self.last: Spread | None = None  # the whole photos' spread, written at the end

    def head(self, head: Head) -> bytes:
        record = dict(head.record)
        if head.face_samples:
            spreads = head.face_spreads or [None] * len(head.face_samples)
            record["faces"] = [{**face, "samples": [base64_text(png).decode() for png in pngs],
                                **(spread.as_json() if spread else {})}
                               for face, pngs, spread in zip(record["faces"], head.face_samples, spreads)]
        if head.spread is not None:
            record.update(head.spread.as_json())
        opening = json.dumps(record)[:-1] + ', "samples": ['
        return opening.encode() + b"".join(self.sample(png) for png in head.samples)

    def sample(self, png: bytes) -> bytes:
        """One entry of "samples" (base64 needs no JSON escaping)."""
        self.written += 1
        return (b", " if self.written > 1 else b"") + b'"' + base64_text(png) + b'"'

    def spread(self, spread: Spread) -> bytes:
        self.last = spread
        return b""

    def end(self, elapsed_s: float) -> bytes:
        tail = "".join(f', "{key}": "{value}"' for key, value in self.last.as_json().items()) if self.last else ""
        return ("]" + tail + f', "elapsed_s": {elapsed_s:.4f}}}').encode()


class _Sink:
    """What ``zipfile`` writes to: no seek, so it writes data descriptors; the bytes are taken
    out after each entry."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


class ZipAnswer:
    """``face{j}_s{seed}_{k:02d}.png`` per face of a photo, ``sample_s{seed}_{k:02d}.png`` (LR faces)
    or ``photo_s{seed}_{k:02d}.{png,jpg,webp}`` (whole photos, in the record's ``photo_format``), with ``summary`` ``{stem}_s{seed}_mean.png`` and
    ``_std.png`` beside each, then ``request.json``: the record."""

    media_type = "application/zip"

    def __init__(self) -> None:
        self.sink = _Sink()
        self.archive = zipfile.ZipFile(self.sink, "w", zipfile.ZIP_STORED)
        self.record: dict[str, Any] = {}
        self.stem = "sample"
        self.suffix = ".png"
        self.written = 0

    @staticmethod
    def filename(seed: int) -> str:
        return f"samples_s{seed}.zip"

    def head(self, head: Head) -> bytes:
        self.record, seed = head.record, head.record["seed"]
        self.stem = "photo" if head.photos else "sample"
        self.suffix = SUFFIXES[head.record.get("photo_format") or "png"]
        for j, pngs in enumerate(head.face_samples):
            for k, png in enumerate(pngs):
                self.archive.writestr(f"face{j}_s{seed}_{k:02d}.png", png)
            if head.face_spreads:
                self._spread(f"face{j}", head.face_spreads[j])
        if head.spread is not None:
            self._spread(self.stem, head.spread)
        return self.sink.take() + b"".join(self.sample(png) for png in head.samples)

    def sample(self, png: bytes) -> bytes:
        self.archive.writestr(f"{self.stem}_s{self.record['seed']}_{self.written:02d}{self.suffix}", png)
        self.written += 1
        return self.sink.take()

    def spread(self, spread: Spread) -> bytes:
        self._spread(self.stem, spread)
        return self.sink.take()

    def _spread(self, stem: str, spread: Spread) -> None:
        self.archive.writestr(f"{stem}_s{self.record['seed']}_mean.png", spread.mean)
        self.archive.writestr(f"{stem}_s{self.record['seed']}_std.png", spread.std)

    def end(self, elapsed_s: float) -> bytes:
        self.archive.writestr("request.json", json.dumps({**self.record, "elapsed_s": round(elapsed_s, 4)}, indent=2))
        self.archive.close()
        return self.sink.take()
