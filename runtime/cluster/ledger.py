"""Which inputs of a run are done, kept beside the outputs so a run can stop anywhere and resume.

Each actor appends to its own journal, ``OUT/.cvdvae-run/journal-{id}.jsonl``, one JSON line per
event, flushed as it is written (appending costs no file creation: a run writes as many
output files as before, and no more):

- ``started``, before any of an input's outputs is written: the run's ``key`` (the model and
  every setting that shapes the files), the input's ``stem``, its content's sha256 (``input``)
  and ``preexisting``, the files of its names that were there before its first attempt
  (someone else's: never replaced without overwrite);
- ``done``, after its last output is written: the same, and its ``outputs``.

An input is complete when a journal holds it ``done`` under this run's key, with the same
content, and every output it lists exists: a second run skips it. Anything else is worked on
again: what an attempt that was killed wrote is replaced (the same names, the same bytes), and
the temporary files an interrupted atomic write left of its exact output names are removed;
what was there before, and the files of other inputs whose names begin with its own, are not
touched. Another image under the same name is another input: the earlier outputs are someone
else's. A line torn by a kill is skipped.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
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


def output_names(stem: str, seed: int) -> re.Pattern[str]:
    """Exactly the names ``runtime.run_files`` gives an input's outputs: ``{stem}_s{seed}_{k:02d}.png``,
    ``_grid``, ``_mean``, ``_std``, and a photo's ``{stem}_face{j}_s{seed}_...``; ``tmp`` (group):
    an atomic write's temporary file of one of them."""
    name = rf"{re.escape(stem)}(?:_face\d+)?_s{seed}_(?:\d{{2,}}|grid|mean|std)\.png"
    return re.compile(rf"(?:{name}|\.{name}\.[A-Za-z0-9_]+\.tmp)")


class Ledger:
    def __init__(self, out: Path, key: str, seed: int):
        self.out, self.key, self.seed = out, key, seed
        self.started: dict[tuple[str, str], list[str]] = {}  # (stem, input sha256) -> preexisting, under this key
        self.done: dict[tuple[str, str], list[str]] = {}     # (stem, input sha256) -> outputs
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
            item, preexisting = (event["stem"], event["input"]), list(event["preexisting"])
            self.started[item] = preexisting
            if event["event"] == "done":
                self.done[item] = list(event["outputs"])
        except (ValueError, KeyError, TypeError):
            return  # a line torn by a kill, or not ours

    def complete(self, stem: str, digest: str) -> bool:
        outputs = self.done.get((stem, digest))
        return outputs is not None and all(Path(p).is_file() for p in outputs)

    def start(self, stem: str, digest: str, planned: list[Path] | None = None) -> set[Path]:
        """Record the input as started; returns the files of its names that are someone else's.
        ``planned``: its outputs, when known before it is worked on (an LR face's: then only they
        are looked for, not the folder listed, which a large run would make quadratic)."""
        item = (stem, digest)
        existing = [path for path in planned if path.exists()] if planned is not None else self._named(stem, tmp=False)
        if existing and item not in self.started:
            self.refresh()  # perhaps an attempt this ledger has not read yet wrote them
        if item in self.started:
            preexisting = {Path(p) for p in self.started[item]}
            for stale in self._named(stem, tmp=True):  # an interrupted atomic write's temporary file
                stale.unlink(missing_ok=True)
        else:
            preexisting = set(existing)
        self._append({"event": "started", "key": self.key, "stem": stem, "input": digest,
                      "preexisting": sorted(map(str, preexisting))})
        self.started[item] = sorted(map(str, preexisting))
        return preexisting

    def finish(self, stem: str, digest: str, outputs: list[str], preexisting: set[Path]) -> None:
        self._append({"event": "done", "key": self.key, "stem": stem, "input": digest,
                      "preexisting": sorted(map(str, preexisting)), "outputs": list(outputs)})
        self.done[stem, digest] = list(outputs)

    def _named(self, stem: str, tmp: bool) -> list[Path]:
        """The files named exactly as the input's outputs (``tmp``: their temporary files)."""
        names = output_names(stem, self.seed)
        prefix = "." if tmp else ""
        return sorted(path for path in self.out.glob(f"{prefix}{glob.escape(stem)}_*")
                      if names.fullmatch(path.name) and path.name.startswith(".") == tmp)

    def _append(self, event: dict) -> None:
        if self._journal is None:
            (self.out / FOLDER).mkdir(parents=True, exist_ok=True)
            self._journal = open(self.out / FOLDER / f"journal-{uuid.uuid4().hex}.jsonl", "a", encoding="utf-8")
        self._journal.write(json.dumps(event) + "\n")
        self._journal.flush()

