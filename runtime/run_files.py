"""A run's inputs into files: what ``cvdvae run`` writes for each LR face, prior draw or photo.

The one flow the command and its Ray Data workers (``runtime.cluster``) share, so a file is
the same bytes whichever wrote it. Names (``runtime.images.outputs``): per input
``{stem}_s{seed}_{k:02d}.png``, ``_grid.png``, with a summary ``_mean.png`` and ``_std.png``; a
photo's faces as ``{stem}_face{j}_s{seed}_...`` and its whole photos as ``{stem}_s{seed}_...``.
Every file is written atomically. What went wrong is recorded, one line per input, in a
``RunRecord``; the caller says it (a command prints it, a worker returns it).

LR faces are read a group per engine call (``max_batch``) and their samples drawn
``SAMPLES_PER_PASS`` per input at a time, each written as it is drawn; the grid and the summary
are made from the samples as they pass. A photo is worked on alone (its faces are one batch);
a photo that fails leaves none of its outputs behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .faces.photos import FaceSearch, PhotoFaces, photo_outputs, write_photo
from .images import outputs
from .images.decode import InputError, error_reason
from .images.summary import Moments
from .pipeline import LRInput, NonFiniteSamples, Pipeline, broken_model_advice

# Samples per input drawn in one pass: a run with a large n holds this many at a time (the grid,
# an image of every sample, holds them all), so n = 1,000 without a grid costs what n = 64 does.
SAMPLES_PER_PASS = 64
CONVERTED_NOTE = ("inputs are converted to 8-bit sRGB RGB (16-bit scaled, transparency over white, colour profiles "
                  "to sRGB)")

Spell = Callable[[str, Any], str]  # a setting as the caller names it (``CVDVAEError.describe``)


@dataclass(frozen=True)
class RunSettings:
    """Where and how the outputs go."""

    out: Path
    seed: int
    temperatures: np.ndarray     # [n] float32
    grid: bool = True
    overwrite: bool = False
    summary: bool = False
    from_hr: bool = False
    search: FaceSearch | None = None  # photos: their faces are found with it; None: LR faces
    upscale: float | None = None
    paste: str = "photo"

    @property
    def n(self) -> int:
        return len(self.temperatures)

    def planned(self, stem: str) -> list[Path]:
        """An LR input's (or prior draw's) outputs."""
        return outputs.planned(self.out, stem, self.seed, self.n, self.grid, self.summary)

    def photo_planned(self, stem: str, faces: int) -> list[Path]:
        return photo_outputs(self.out, stem, self.seed, self.n, faces, self.grid, self.paste, self.summary)


@dataclass
class RunRecord:
    """What happened to the inputs worked on: the files written, one line per failed input, counts."""

    written: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    samples: int = 0
    non_finite_samples: int = 0
    photos: list[dict] = field(default_factory=list)  # per photo: its faces and outputs
    converted: str | None = None  # the first converted input, said once: "PATH is 16-bit grey"

    def fail(self, path: Path | str, message: str, broken: bool = False) -> None:
        """``broken``: the input failed while worked on (NaN/Inf samples, a failure midway), not for what it is."""
        self.failed.append({"input": str(path), "error": message, **({"broken": True} if broken else {})})


# ---------------------------------------------------------------- LR faces and prior draws
def write_lr_inputs(pipe: Pipeline, paths: list[Path], settings: RunSettings, record: RunRecord, spell: Spell,
                    on_group: Callable[[int], None] | None = None) -> None:
    """Each input's files (a prior-only model: ``paths`` is the one stem its draws are named by),
    a group of ``max_batch`` inputs per engine call; ``on_group(inputs)`` after each group."""
    for start in range(0, len(paths), pipe.backend.max_batch):
        group = paths[start:start + pipe.backend.max_batch]
        inputs = read_inputs(pipe, group, settings.from_hr, record, spell)
        if inputs:
            sample_inputs(pipe, inputs, settings, record)
        record.samples += len(inputs) * settings.n
        if on_group is not None:
            on_group(len(group))


def read_inputs(pipe: Pipeline, paths: list[Path], from_hr: bool, record: RunRecord, spell: Spell) -> list[LRInput]:
    if not pipe.shape.conditional:
        return [LRInput(None, None, str(paths[0]))]
    inputs = []
    for path in paths:
        try:
            item = pipe.prepare_one(path, from_hr)
        except InputError as err:
            record.fail(path, err.describe(spell))
            continue
        if item.converted and record.converted is None:
            record.converted = f"{path} is {item.converted}"
        inputs.append(item)
    return inputs


@dataclass
class PassingSamples:
    """One input's samples as they pass: what its grid and summary need, and which were broken."""

    grid: bool
    summary: bool
    tiles: list[np.ndarray] = field(default_factory=list)
    moments: Moments = field(default_factory=Moments)
    broken: list[int] = field(default_factory=list)
    non_finite_values: int = 0

    def add(self, finite: list[np.ndarray], broken: list[int], non_finite_values: int) -> None:
        if self.grid:
            self.tiles += finite
        if self.summary:
            for sample in finite:
                self.moments.add(sample)
        self.broken += broken
        self.non_finite_values += non_finite_values


def sample_inputs(pipe: Pipeline, inputs: list[LRInput], settings: RunSettings, record: RunRecord) -> None:
    """Every sample of ``inputs`` written as it is drawn, ``SAMPLES_PER_PASS`` per input at a time;
    then each input's grid and summary, made from its samples as they passed."""
    passing = [PassingSamples(settings.grid, settings.summary) for _ in inputs]
    for first in range(0, settings.n, SAMPLES_PER_PASS):
        temperatures = settings.temperatures[first:first + SAMPLES_PER_PASS]
        try:
            output = pipe(inputs, len(temperatures), settings.seed, temperatures, first_sample=first)
        except NonFiniteSamples as err:
            output = err.output
        for i, samples in enumerate(passing):
            bad = output.non_finite[i]
            written = outputs.write_samples(settings.out, Path(inputs[i].name).stem, settings.seed,
                                            output.samples[i], None, frozenset(bad), first)
            record.written += map(str, written)
            samples.add(output.finite(i), [first + k for k in bad], int(output.non_finite_values[i].sum()))
    for item, samples in zip(inputs, passing):
        finish_input(pipe, item, samples, settings, record)


def finish_input(pipe: Pipeline, item: LRInput, samples: PassingSamples, settings: RunSettings,
                 record: RunRecord) -> None:
    """The input's grid and summary when every sample is finite; a sample with NaN/Inf is never
    written (it would show as black or white pixels), and said."""
    path = Path(item.name)
    if samples.broken:
        record.non_finite_samples += len(samples.broken)
        record.fail(path, f"{path}: {len(samples.broken)} of {settings.n} samples contain NaN/Inf "
                          f"({samples.non_finite_values:,} values; samples {', '.join(map(str, samples.broken))}) "
                          f"and were not written: {broken_model_advice(pipe.backend.precision)}", broken=True)
        return
    spread = samples.moments.summary() if settings.summary else None
    if settings.grid:
        pixels = outputs.input_grid(item.lr, item.hr, samples.tiles, pipe.shape.scale, spread)
        record.written.append(str(outputs.grid_path(settings.out, path.stem, settings.seed)))
        outputs.write_png(Path(record.written[-1]), pixels)
    if spread is not None:
        record.written += map(str, outputs.write_summary(settings.out, path.stem, settings.seed, spread))


# ---------------------------------------------------------------- photos
def write_photo_input(pipe: Pipeline, path: Path, settings: RunSettings, record: RunRecord, spell: Spell,
                      replaceable: Callable[[Path], bool] | None = None) -> list[str] | None:
    """The photo's files, or None when it failed (one line in ``record``, none of its outputs
    left behind). An output that exists already is refused unless ``replaceable(path)`` (default:
    ``settings.overwrite``)."""
    planned: list[Path] = []
    try:
        found = pipe.detect_faces(path, settings.search, settings.upscale, settings.paste)
        planned = check_photo_outputs(path, found, settings, replaceable)
        result = pipe.sample_faces(found, settings.seed, settings.temperatures, settings.upscale, settings.paste)
        written = [str(p) for p in write_photo(result, settings.out, path.stem, settings.grid, pipe.shape.scale,
                                               settings.summary)]
    except NonFiniteSamples as err:
        record.non_finite_samples += sum(len(broken) for broken in err.output.non_finite)
        record.fail(path, f"{err}; nothing was written for this photo", broken=True)
    except InputError as err:
        record.fail(path, err.describe(spell))
    except Exception as err:  # noqa: BLE001 - one photo's failure never stops the rest
        remove_partial(planned)
        what = "out of memory" if isinstance(err, MemoryError) else f"{type(err).__name__}: {error_reason(err)}"
        record.fail(path, f"{path}: failed while being worked on ({what}); nothing was kept for this photo",
                    broken=True)
    else:
        record.written += written
        record.photos.append({"input": str(path), **result.record(pipe.shape.hr_size), "outputs": written})
        record.samples += len(result.faces) * settings.n
        return written
    return None


def remove_partial(planned: list[Path]) -> None:
    """A failed photo's outputs written so far (none of them existed before: ``check_photo_outputs``)."""
    for path in planned:
        path.unlink(missing_ok=True)


def check_photo_outputs(path: Path, found: PhotoFaces, settings: RunSettings,
                        replaceable: Callable[[Path], bool] | None = None) -> list[Path]:
    """The photo's outputs to be: none may exist unless replaceable. Returns those that do not
    exist yet (what a failure midway removes: an overwritten file's old content is gone anyway)."""
    planned = settings.photo_planned(path.stem, len(found.faces))
    existing = [p for p in planned if p.exists()]
    refused = [p for p in existing if not (replaceable(p) if replaceable else settings.overwrite)]
    if refused:
        raise InputError(f"{path}: {refused[0]} exists ({len(refused)} outputs); pass {{overwrite}}", "exists",
                         overwrite=True)
    return [p for p in planned if not p.exists()]
