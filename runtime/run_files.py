"""A run's inputs into files: what ``cvdvae run`` writes for each LR face, prior draw or photo.

The one flow the command and its Ray Data workers (``runtime.cluster``) share, so a file is
the same bytes whichever wrote it. Names (``runtime.images.outputs``): per input
``{stem}_s{seed}_{k:02d}.png``, ``_grid.png``, with a summary ``_mean.png`` and ``_std.png``; a
photo's faces as ``{stem}_face{j}_s{seed}_...`` and its whole photos as ``{stem}_s{seed}_...``.
Every file is written atomically. What a run did is one ``RunRecord``, whichever way it ran
(``cvdvae run``, ``run --ray``, the demo): the files written, the inputs done, skipped and
failed (one line each, said as it happens and listed in ``failures_s{seed}.txt``), the engine,
the exit status, and the one ``--json`` shape.

LR faces are read a group per engine call (``max_batch``) and their samples drawn
``SAMPLES_PER_PASS`` per input at a time, each written as it is drawn; the grid and the summary
are made from the samples as they pass. A photo is worked on alone (its faces are one batch);
a photo that fails leaves none of its outputs behind.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from cvdvae.errors import InputError, NonFiniteSamples
from cvdvae.fileio import atomic_path

from .backends import Backend
from .faces.photos import FaceSearch, PhotoFaces, photo_outputs, write_photo
from .images import outputs
from .images.decode import error_reason
from .images.photo_format import PhotoFormat
from .images.summary import Moments
from .pipeline import LRInput, Pipeline, broken_model_advice

# Samples per input drawn in one pass: a run with a large n holds this many at a time (the grid,
# an image of every sample, holds them all), so n = 1,000 without a grid costs what n = 64 does.
SAMPLES_PER_PASS = 64
CONVERTED_NOTE = ("inputs are converted to 8-bit sRGB RGB (16-bit scaled, transparency over white, colour profiles "
                  "to sRGB)")

FAILURES = "failures_s{seed}.txt"
EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2  # docs/reference/errors.md

Spell = Callable[[str, Any], str]  # a setting as the caller names it (``CVDVAEError.describe``)
Replaceable = Callable[[Path], bool]  # whether an existing output may be written over


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
    variation: dict[str, Any] = field(default_factory=dict)  # like, like_seed, vary_from, temperature_at
    photo_format: PhotoFormat = PhotoFormat()  # whole photos' (``runtime.images.photo_format``)

    @property
    def n(self) -> int:
        return len(self.temperatures)

    def planned(self, stem: str) -> list[Path]:
        """An LR input's (or prior draw's) outputs."""
        return outputs.planned(self.out, stem, self.seed, self.n, self.grid, self.summary)

    def photo_planned(self, stem: str, faces: int, input_format: str | None = None) -> list[Path]:
        suffix = self.photo_format.chosen(input_format, self.paste == "transparent").suffix
        return photo_outputs(self.out, stem, self.seed, self.n, faces, self.grid, self.paste, self.summary, suffix)

    def replaceable(self, path: Path) -> bool:
        """Whether an output that exists may be written over: only with ``overwrite``."""
        return self.overwrite


@dataclass
class RunRecord:
    """What a run did, whichever way it ran: its ``--json`` (``summary``) and its exit status.

    A run's inputs are ``done``, ``skipped`` (complete from an earlier run, on Ray) or ``failed``;
    ``say(line)`` hears each failure as it happens. A Ray actor keeps its own record of a batch
    and the driver ``merge``s what comes back."""

    inputs: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[dict] = field(default_factory=list)
    samples: int = 0
    non_finite_samples: int = 0
    written: list[str] = field(default_factory=list)
    photos: list[dict] = field(default_factory=list)  # per photo: its faces and outputs
    converted: str | None = None  # the first converted input, said once: "PATH is 16-bit grey"
    engine: dict[str, Any] = field(default_factory=lambda: engine_record(None))
    cluster: dict[str, Any] = field(default_factory=lambda: {"actors": None, "cpus_per_actor": None,
                                                                "gpus_per_actor": None})
    failures_file: str | None = None
    start: float = field(default_factory=time.perf_counter)
    wall_s: float | None = None  # once the run has ended
    say: Callable[[str], None] | None = field(default=None, repr=False)

    def fail(self, path: Path | str, message: str, broken: bool = False) -> None:
        """``broken``: the input failed while worked on (NaN/Inf samples, a failure midway), not for what it is."""
        self.failed.append({"input": str(path), "error": message, **({"broken": True} if broken else {})})
        if self.say is not None:
            self.say(message)

    def merge(self, other: "RunRecord") -> None:
        """An actor's record of its inputs into this (the driver's) record."""
        self.done += other.done
        self.samples += other.samples
        self.non_finite_samples += other.non_finite_samples
        self.written += other.written
        self.photos += other.photos
        self.engine["noise_s"] += other.engine["noise_s"]
        if self.engine["backend"] is None:
            self.engine = {**other.engine, "noise_s": self.engine["noise_s"]}
        for failure in other.failed:
            self.fail(failure["input"], failure["error"], failure.get("broken", False))

    @property
    def exit_status(self) -> int:
        """1 when an engine produced NaN/Inf or an input failed while worked on, else 2 for bad inputs, else 0."""
        if any(item.get("broken") for item in self.failed):
            return EXIT_FAILURE
        return EXIT_BAD_INPUT if self.failed else EXIT_OK

    def finish(self, settings: "RunSettings") -> None:
        """The run has ended: its wall time, and its failures listed in ``settings.out`` (a previous
        run's list replaced, or removed when none failed)."""
        self.wall_s = time.perf_counter() - self.start
        self.failures_file = write_failures(settings, self.failed)

    def summary(self, settings: "RunSettings") -> dict[str, Any]:
        """The ``--json`` of every run: the same fields whichever way it ran (null where they do not apply)."""
        wall = self.wall_s if self.wall_s is not None else time.perf_counter() - self.start
        return {"inputs": self.inputs, "done": self.done, "skipped": self.skipped, "failed": len(self.failed),
                "samples": self.samples, "non_finite_samples": self.non_finite_samples, "wall_s": round(wall, 3),
                "samples_per_s": round(self.samples / wall, 3) if wall else None, "seed": settings.seed,
                "n": settings.n, **self.engine, "noise_s": round(self.engine["noise_s"], 3), **self.cluster,
                "failures_file": self.failures_file, "errors": self.failed, "outputs": self.written,
                "photos": self.photos}


def engine_record(backend: Backend | None) -> dict[str, Any]:
    """What ran the samples, for ``RunRecord.engine`` (all None before an engine is known)."""
    if backend is None:
        return {"backend": None, "execution_provider": None, "precision": None, "fp32_groups": [],
                "cuda_graphs": None, "noise_s": 0.0}
    return {"backend": backend.name, "execution_provider": backend.provider, "precision": backend.precision,
            "fp32_groups": list(backend.fp32_groups), "cuda_graphs": backend.cuda_graphs,
            "noise_s": backend.timings.noise}


def write_failures(settings: "RunSettings", failed: list[dict]) -> str | None:
    """The failures of this run, one line each, as ``OUT/failures_s{seed}.txt`` (None when none failed)."""
    path = settings.out / FAILURES.format(seed=settings.seed)
    if not failed:
        path.unlink(missing_ok=True)
        return None
    settings.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(item["error"].replace("\n", " ") + "\n" for item in failed))
    return str(path)


def refuse_existing(path: Path, planned: list[Path], replaceable: Replaceable) -> None:
    """``InputError`` when one of ``path``'s outputs to be exists and may not be written over."""
    taken = [p for p in planned if p.exists() and not replaceable(p)]
    if taken:
        raise InputError(f"{path}: {taken[0]} exists ({len(taken)} outputs); pass {{overwrite}}", "exists",
                         overwrite=True)


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
        output = pipe(inputs, len(temperatures), settings.seed, temperatures, first_sample=first, keep_non_finite=True,
                      **settings.variation)
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
    record.done += 1


# ---------------------------------------------------------------- photos
def write_photo_inputs(pipe: Pipeline, paths: list[Path], settings: RunSettings, record: RunRecord, spell: Spell,
                       done: Callable[[], None] = lambda: None) -> None:
    """Each photo's files (``write_photo_input``), ``done()`` after each; photo k+1 is read, its
    faces found and aligned on a thread while photo k is sampled and written, so the engine waits
    for no detection but the first. One photo ahead at most: memory holds two decoded photos."""
    for path, found in found_ahead(pipe, paths, settings):
        write_photo_input(pipe, path, settings, record, spell, detected=found)
        done()


def found_ahead(pipe: Pipeline, paths: list[Path], settings: RunSettings) -> Iterator[tuple[Path, Callable]]:
    """(path, a call giving its ``PhotoFaces`` or raising as ``detect_faces`` does) for each photo,
    the next photo's detection started as this one is handed out."""
    def detect(path: Path) -> PhotoFaces:
        return pipe.detect_faces(path, settings.search, settings.upscale, settings.paste)

    with ThreadPoolExecutor(1, thread_name_prefix="cvdvae-detect") as pool:
        ahead: Future | None = pool.submit(detect, paths[0]) if paths else None
        for i, path in enumerate(paths):
            current, ahead = ahead, pool.submit(detect, paths[i + 1]) if i + 1 < len(paths) else None
            yield path, current.result


def write_photo_input(pipe: Pipeline, path: Path, settings: RunSettings, record: RunRecord, spell: Spell,
                      replaceable: Replaceable | None = None,
                      detected: Callable[[], PhotoFaces] | None = None) -> list[str] | None:
    """The photo's files, or None when it failed (one line in ``record``, none of its outputs
    left behind). An output that exists already is refused unless ``replaceable(path)`` (default:
    ``settings.overwrite``). ``detected``: the photo's faces found elsewhere (``found_ahead``)."""
    planned: list[Path] = []
    try:
        found = detected() if detected is not None else pipe.detect_faces(path, settings.search, settings.upscale,
                                                                          settings.paste)
        planned = check_photo_outputs(path, found, settings, replaceable)
        noise = pipe.recipe(settings.seed, settings.n, **settings.variation)
        result = pipe.sample_faces(found, noise, settings.temperatures, settings.upscale, settings.paste)
        written = [str(p) for p in write_photo(result, settings.out, path.stem, settings.grid, pipe.shape.scale,
                                               settings.summary, settings.photo_format)]
    except NonFiniteSamples as err:
        record.non_finite_samples += err.count
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
        record.done += 1
        return written
    return None


def remove_partial(planned: list[Path]) -> None:
    """A failed photo's outputs written so far (none of them existed before: ``check_photo_outputs``)."""
    for path in planned:
        path.unlink(missing_ok=True)


def check_photo_outputs(path: Path, found: PhotoFaces, settings: RunSettings,
                        replaceable: Replaceable | None = None) -> list[Path]:
    """The photo's outputs to be: none may exist unless replaceable (default: with ``overwrite``).
    Returns those that do not exist yet (what a failure midway removes: an overwritten file's old
    content is gone anyway)."""
    planned = settings.photo_planned(path.stem, len(found.faces), found.format)
    refuse_existing(path, planned, replaceable or settings.replaceable)
    return [p for p in planned if not p.exists()]
