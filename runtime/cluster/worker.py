"""The Ray Data actor: one ``Pipeline`` (one engine), and for each batch of input paths the files
``cvdvae run`` writes for them (``runtime.run_files``), each input's record kept in the ledger.

A batch comes back as one row: the ``RunRecord`` of its inputs, as JSON, which the driver merges
into the run's. Ray Data restarts an actor that dies and runs its batch again; an input that was
being written is then written again from its start (``Ledger.start``), so it ends with every
output once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvdvae.errors import InputError

from ..pipeline import Pipeline
from ..run_files import (RunRecord, RunSettings, Spell, engine_record, refuse_existing, write_lr_inputs,
                         write_photo_input)
from .ledger import Ledger

SHIPPED = ("done", "failed", "samples", "non_finite_samples", "written", "photos", "engine")  # what a row carries


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
    """``map_batches`` callable: ``{"path": [...], "sha256": [...]}`` in, one row out: ``{"record": [the batch's RunRecord as JSON]}``."""

    def __init__(self, engine: EngineChoice, settings: RunSettings, key: str, spell: Spell):
        self.pipe = engine.open()
        if settings.search is not None:
            self.pipe.detector  # noqa: B018 - loaded before the first photo
        self.settings, self.spell = settings, spell
        self.ledger = Ledger(settings.out, key, settings.seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        inputs = {Path(str(p)): str(digest) for p, digest in zip(batch["path"], batch["sha256"])}
        record, noise = RunRecord(), self.pipe.backend.timings.noise
        if self.settings.search is not None:
            self._photos(inputs, record)
        else:
            self._lr_inputs(inputs, record)
        record.engine = {**engine_record(self.pipe.backend), "noise_s": self.pipe.backend.timings.noise - noise}
        return {"record": [json.dumps({name: getattr(record, name) for name in SHIPPED})]}

    def _lr_inputs(self, inputs: dict[Path, str], record: RunRecord) -> None:
        """``inputs``: path -> its content's sha256."""
        settings = self.settings
        claimed: dict[Path, tuple[list[Path], set[Path]]] = {}  # input -> its outputs, the files there before
        for path, digest in inputs.items():
            planned = settings.planned(path.stem)
            preexisting = self.ledger.start(path.stem, digest, planned)
            try:
                refuse_existing(path, planned, lambda p: settings.overwrite or p not in preexisting)
            except InputError as err:
                record.fail(path, err.describe(self.spell))
                continue
            claimed[path] = planned, preexisting
        write_lr_inputs(self.pipe, list(claimed), settings, record, self.spell)
        failed = {item["input"] for item in record.failed}
        for path, (planned, preexisting) in claimed.items():
            if str(path) not in failed:
                self.ledger.finish(path.stem, inputs[path], [str(p) for p in planned], preexisting)

    def _photos(self, inputs: dict[Path, str], record: RunRecord) -> None:
        for path, digest in inputs.items():
            preexisting = self.ledger.start(path.stem, digest)
            written = write_photo_input(self.pipe, path, self.settings, record, self.spell,
                                        lambda p: self.settings.overwrite or p not in preexisting)
            if written is not None:
                self.ledger.finish(path.stem, digest, written, preexisting)


def record_of(row: dict[str, Any]) -> RunRecord:
    """A row of ``InputWriter`` back as the ``RunRecord`` of its batch."""
    return RunRecord(**json.loads(row["record"]))
