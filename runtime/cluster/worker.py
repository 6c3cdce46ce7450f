"""The Ray Data actor: one ``Pipeline`` (one engine), and for each batch of input paths the files
``cvdvae run`` writes for them (``runtime.run_files``), each input's record kept in the ledger.

Ray Data restarts an actor that dies and runs its batch again; an input that was being written
is then written again from its start (``Ledger.start``), so it ends with every output once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..images.decode import InputError
from ..pipeline import Pipeline
from ..run_files import RunRecord, RunSettings, Spell, write_lr_inputs, write_photo_input
from .ledger import Ledger


@dataclass(frozen=True)
class EngineChoice:
    """How each actor opens the model (``Pipeline.from_pretrained``)."""

    model: str
    backend: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    max_batch: int | None = None
    max_n: int | None = None

    def open(self) -> Pipeline:
        return Pipeline.from_pretrained(self.model, self.backend, self.threads, max_batch=self.max_batch,
                                        max_n=self.max_n, precision=self.precision)


class InputWriter:
    """``map_batches`` callable: ``{"path": [...]}`` in, one row per input out: its status ("done" or
    "failed"), the error line, the samples made and the outputs written."""

    def __init__(self, engine: EngineChoice, settings: RunSettings, key: str, spell: Spell):
        self.pipe = engine.open()
        if settings.search is not None:
            self.pipe.detector  # noqa: B018 - loaded before the first photo
        self.settings, self.spell = settings, spell
        self.ledger = Ledger(settings.out, key)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        paths = [Path(str(p)) for p in batch["path"]]
        rows = self._photos(paths) if self.settings.search is not None else self._lr_inputs(paths)
        return {name: [row[name] for row in rows] for name in ("input", "status", "error", "samples", "outputs")}

    def _lr_inputs(self, paths: list[Path]) -> list[dict[str, Any]]:
        settings, record = self.settings, RunRecord()
        claimed: dict[Path, tuple[list[Path], set[Path]]] = {}  # input -> its outputs, the files there before
        for path in paths:
            planned = settings.planned(path.stem)
            preexisting = self.ledger.start(path.stem, planned)
            taken = [p for p in planned if p in preexisting and p.exists()]
            if taken and not settings.overwrite:
                error = InputError(f"{path}: {taken[0]} exists ({len(taken)} outputs); pass {{overwrite}}", "exists",
                                   overwrite=True)
                record.fail(path, error.describe(self.spell))
            else:
                claimed[path] = planned, preexisting
        write_lr_inputs(self.pipe, list(claimed), settings, record, self.spell)
        failed = {item["input"]: item for item in record.failed}
        rows = []
        for path in paths:
            if str(path) in failed:
                rows.append(_failed(path, failed[str(path)]))
                continue
            planned, preexisting = claimed[path]
            self.ledger.finish(path.stem, [str(p) for p in planned], preexisting)
            rows.append(_row(path, "done", "", settings.n, len(planned)))
        return rows

    def _photos(self, paths: list[Path]) -> list[dict[str, Any]]:
        rows = []
        for path in paths:
            record = RunRecord()
            preexisting = self.ledger.start(path.stem)
            written = write_photo_input(self.pipe, path, self.settings, record, self.spell,
                                        lambda p: self.settings.overwrite or p not in preexisting)
            if written is None:
                rows.append(_failed(path, record.failed[0]))
                continue
            self.ledger.finish(path.stem, written, preexisting)
            rows.append(_row(path, "done", "", record.samples, len(written)))
        return rows


def _row(path: Path, status: str, error: str, samples: int = 0, outputs: int = 0) -> dict[str, Any]:
    return {"input": str(path), "status": status, "error": error, "samples": samples, "outputs": outputs}


def _failed(path: Path, failure: dict) -> dict[str, Any]:
    """"failed" for what the input is, "broken" for what happened to it (``RunRecord.fail``)."""
    return _row(path, "broken" if failure.get("broken") else "failed", failure["error"])
