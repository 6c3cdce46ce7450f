"""Which inputs of a run are done, kept beside the outputs so a run can stop anywhere and resume.

Each actor appends to its own journal, ``OUT/.cvdvae-run/journal-{id}.jsonl``, one JSON line per
event, flushed as it is written (appending costs no file creation: a run writes as many
output files as before, and no more):

- ``started``, before any of an input's outputs is written: the run's ``key`` (the model and
  every setting that shapes the files), the input's ``stem`` and ``preexisting``, the files of
  its names that were there before its first attempt (someone else's: never replaced without
  overwrite);
- ``done``, after its last output is written: the same, and its ``outputs``.

An input is complete when a journal holds it ``done`` under this run's key and every output it
lists exists: a second run skips it. Anything else is worked on again: what an attempt that was
killed wrote is replaced (the same names, the same bytes), and the temporary files an
interrupted atomic write left are removed; what was there before is not touched. A line torn
by a kill is skipped.
"""

from __future__ import annotations

import glob
import hashlib
import json
import uuid
from pathlib import Path
from typing import IO, Any

FOLDER = ".cvdvae-run"


def run_key(model_id: str, settings: Any) -> str:
    """What makes two runs' files the same: the model and the settings, hashed."""
    search = settings.search
    identity = {"model": model_id, "seed": settings.seed, "temperatures": [float(t) for t in settings.temperatures],
                "grid": settings.grid, "summary": settings.summary, "from_hr": settings.from_hr,
                "faces": None if search is None else [search.min_face, search.max_faces, search.min_score,
                                                      settings.upscale, settings.paste]}
    if settings.variation:  # a run without one keeps the key it always had
        identity["variation"] = {k: v if k != "temperature_at" else sorted(v.items())
                                 for k, v in settings.variation.items() if v is not None}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class Ledger:
    def __init__(self, out: Path, key: str):
        self.out, self.key = out, key
        self.started: dict[str, list[str]] = {}  # stem -> preexisting, under this key
        self.done: dict[str, list[str]] = {}     # stem -> outputs
        self._journal: IO[str] | None = None
        self.refresh()

    def refresh(self) -> None:
        """Read every journal (other actors', earlier runs')."""
        for path in sorted((self.out / FOLDER).glob("journal-*.jsonl")):
            with open(path, encoding="utf-8", errors="replace") as journal:
                for line in journal:
                    self._apply(line)

    def _apply(self, line: str) -> None:
        try:
            event = json.loads(line)
            if event["key"] != self.key:
                return
            stem, preexisting = event["stem"], list(event["preexisting"])
            self.started[stem] = preexisting
            if event["event"] == "done":
                self.done[stem] = list(event["outputs"])
        except (ValueError, KeyError, TypeError):
            return  # a line torn by a kill, or not ours

    def complete(self, stem: str) -> bool:
        return stem in self.done and all(Path(p).is_file() for p in self.done[stem])

    def start(self, stem: str, planned: list[Path] | None = None) -> set[Path]:
        """Record the input as started; returns the files of its names that are someone else's.
        ``planned``: its outputs, when known before it is worked on (an LR face's: then only they
        are looked for, not the folder listed, which a large run would make quadratic)."""
        existing = [path for path in planned if path.exists()] if planned is not None else self._named(stem, "")
        if existing and stem not in self.started:
            self.refresh()  # perhaps an attempt this ledger has not read yet wrote them
        if stem in self.started:
            preexisting = {Path(p) for p in self.started[stem]}
            for stale in self._named(stem, "."):  # an interrupted atomic write's temporary file
                stale.unlink(missing_ok=True)
        else:
            preexisting = set(existing)
        self._append({"event": "started", "key": self.key, "stem": stem, "preexisting": sorted(map(str, preexisting))})
        self.started[stem] = sorted(map(str, preexisting))
        return preexisting

    def finish(self, stem: str, outputs: list[str], preexisting: set[Path]) -> None:
        self._append({"event": "done", "key": self.key, "stem": stem, "preexisting": sorted(map(str, preexisting)),
                      "outputs": list(outputs)})
        self.done[stem] = list(outputs)

    def _named(self, stem: str, prefix: str) -> list[Path]:
        """Files named as the input's outputs (``prefix`` "." and a ".tmp" tail: their temporary files)."""
        name = glob.escape(stem)
        tail = ".png.*.tmp" if prefix else ".png"
        patterns = [f"{prefix}{name}_s*_*{tail}", f"{prefix}{name}_face*_s*_*{tail}"]
        return sorted({path for pattern in patterns for path in self.out.glob(pattern)})

    def _append(self, event: dict) -> None:
        if self._journal is None:
            (self.out / FOLDER).mkdir(parents=True, exist_ok=True)
            self._journal = open(self.out / FOLDER / f"journal-{uuid.uuid4().hex}.jsonl", "a", encoding="utf-8")
        self._journal.write(json.dumps(event) + "\n")
        self._journal.flush()
