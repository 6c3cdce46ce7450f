"""``cvdvae run`` (alias ``cvdvae-run``): LR faces or whole photos -> seeded, diverse samples on disk;
with a prior-only model, faces drawn from noise alone. The samples come from ``cvdvae.Pipeline``;
this module reads flags, writes files and reports."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional, Sequence

import numpy as np
import typer

from cvdvae.progress import ProgressBar

from ..backends import CHOICES, PRECISION_CHOICES
from ..faces.photos import MAX_FACES, FaceSearch, PhotoFaces, photo_outputs, write_photo
from ..images import outputs
from ..images.decode import InputError, error_reason
from ..images.paths import expand_inputs
from ..images.summary import Moments
from ..model_files import ModelShape, locate
from ..pipeline import LRInput, NonFiniteSamples, Pipeline, broken_model_advice
from .common import (EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, Debug, Json, Overwrite, Precision, Quiet, Samples, Seed,
                     Temperatures, check_choice, command_app, examples, flag_for, parse_temperatures, run_app)

UNCONDITIONAL_STEM = "sample"  # output names of a prior-only model: sample_s{seed}_{k:02d}.png
# Samples per input drawn in one pass: a run with a large n holds this many at a time (the grid,
# an image of every sample, holds them all), so n = 1,000 with --no-grid costs what n = 64 does.
SAMPLES_PER_PASS = 64

app = command_app("Super-resolve LR face images into n diverse samples each, reproducibly from a seed; "
                  "with a prior-only model (no LR encoder), draw n faces from noise alone.")


@dataclass(frozen=True)
class Written:
    """Where and how the outputs go."""

    out: Path
    seed: int
    temperatures: np.ndarray
    grid: bool
    overwrite: bool
    summary: bool = False


@dataclass
class Run:
    """What happened, for the summary line and --json."""

    pipe: Pipeline
    settings: Written
    prog: str
    inputs: int = 0
    written: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    samples: int = 0
    non_finite_samples: int = 0
    start: float = field(default_factory=time.perf_counter)
    converted_note_shown: bool = False
    photos: list[dict] | None = None  # --faces: per photo, its faces and outputs

    broken_inputs: int = 0  # inputs that failed while being worked on (not for what they are)

    def fail(self, path: Path | str, message: str) -> None:
        self.failed.append({"input": str(path), "error": message})
        print(f"{self.prog}: error: {message}", file=sys.stderr)

    def summary(self) -> dict:
        wall = time.perf_counter() - self.start
        backend, settings = self.pipe.backend, self.settings
        return {"inputs": self.inputs, "failed": len(self.failed), "samples": self.samples,
                "non_finite_samples": self.non_finite_samples,
                "wall_s": round(wall, 3), "samples_per_s": round(self.samples / wall, 3) if wall else None,
                "backend": backend.name, "execution_provider": backend.provider, "cuda_graphs": backend.cuda_graphs,
                "precision": backend.precision, "fp32_groups": list(backend.fp32_groups), "seed": settings.seed,
                "n": len(settings.temperatures), "noise_s": round(backend.timings.noise, 3), "errors": self.failed,
                "outputs": self.written,
                **({"photos": self.photos} if self.photos is not None else {})}

    @property
    def exit_status(self) -> int:
        """1 when an engine produced NaN/Inf or a photo failed while worked on, else 2 for bad inputs."""
        if self.non_finite_samples or self.broken_inputs:
            return EXIT_FAILURE
        return EXIT_BAD_INPUT if self.failed else EXIT_OK


@app.command("run", epilog=examples(
    "cvdvae run engines/x4-fp16 --input faces/ --n 8 --seed 0 --temperature 0.8",
    "cvdvae run engines/x4-fp16 --input 'ffhq/*.png' --from-hr --temperature 0.2,0.6,1.0 --json",
    "cvdvae run engines/x4-fp16 --input photos/ --faces --n 8 --json > faces.json   # whole photos",
    "cvdvae run engines/vdvae-ffhq256-fp32 --n 16 --seed 0      # a prior-only model: faces from noise"))
def run_command(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(exists=True, metavar="MODEL", show_default=False, help=(
        "an engine.plan, a model.onnx or an export folder; or weights (.safetensors, .ckpt, .th: PyTorch)"))],
    input: Annotated[Optional[list[str]], typer.Option(
        "--input", "-i", help="image files, folders or globs (PNG, JPEG, WebP); repeat it or give "
                              "several")] = None,
    n: Samples = None,
    seed: Seed = 0,
    temperature: Temperatures = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("outputs"),
    from_hr: Annotated[bool, typer.Option(
        "--from-hr", help="inputs are HR images: make the LR input with the MATLAB bicubic degradation")] = False,
    faces: Annotated[bool, typer.Option(
        "--faces", help="inputs are photos: find every face, align it as FFHQ was, super-resolve it and paste "
                        "the samples back into the photo (needs `cvdvae fetch mtcnn`)")] = False,
    max_faces: Annotated[int, typer.Option(min=1, help="--faces: the most confident faces kept per "
                                                       "photo")] = MAX_FACES,
    min_face: Annotated[int, typer.Option(min=12, help="--faces: the smallest face searched for, in photo "
                                                       "pixels")] = 20,
    min_score: Annotated[float, typer.Option(min=0.7, max=1.0, help=(
        "--faces: the detector's confidence a face needs (0.7 keeps all MTCNN finds; 0.9 drops the rare "
        "face-like object)"))] = 0.9,
    upscale: Annotated[Optional[float], typer.Option(min=0.01, max=16.0, help=(
        "--faces: the output photo's scale (default: the model's factor)"))] = None,
    face_only: Annotated[bool, typer.Option("--face-only", help=(
        "--faces: the whole-photo outputs hold the faces alone on a transparent background (RGBA PNG), to "
        "layer over a background upscaled elsewhere"))] = False,
    no_paste: Annotated[bool, typer.Option("--no-paste", help=(
        "--faces: no whole-photo outputs, only the aligned face samples and their grids"))] = False,
    overwrite: Overwrite = False,
    grid: Annotated[bool, typer.Option("--grid/--no-grid", help="a grid PNG per input")] = True,
    summary: Annotated[bool, typer.Option("--summary", help=(
        "also the samples' mean ({stem}_s{seed}_mean.png) and per-pixel standard deviation map (_std.png: "
        "viridis, its range on a scale bar), and both in the grid; with --faces per face and for the whole "
        "photos"))] = False,
    backend: Annotated[str, typer.Option(help=f"{', '.join(CHOICES)}; auto: TensorRT when the folder has an engine "
                                              "and TensorRT runs, else ONNX Runtime with CUDA, else OpenVINO, else "
                                              "ONNX Runtime on the CPU; torch for weight files")] = "auto",
    max_batch: Annotated[Optional[int], typer.Option(min=1, help="images per engine call (default: the engine's "
                                                                 "profile; on a CPU, what fits its budget)")] = None,
    max_n: Annotated[Optional[int], typer.Option(min=1, help="samples per image per call (default: the profile; "
                                                             "on a CPU, what fits its budget)")] = None,
    precision: Precision = "auto",
    quiet: Quiet = False,
    json_: Json = False,
    debug: Debug = False,
) -> int:
    temperatures = np.asarray(parse_temperatures(temperature, n), dtype=np.float32)
    check_choice(backend, CHOICES, "--backend")
    check_choice(precision, PRECISION_CHOICES, "--precision")
    photo_flags = {"--max-faces": max_faces != MAX_FACES, "--upscale": upscale is not None, "--face-only": face_only,
                   "--no-paste": no_paste, "--min-face": min_face != 20, "--min-score": min_score != 0.9}
    check_face_flags(faces, from_hr, face_only, no_paste, [flag for flag, given in photo_flags.items() if given])
    if model.is_dir() or model.suffix in (".onnx", ".plan", ".engine"):
        check_inputs_fit(locate(model).shape, model, input, from_hr, faces)  # before the engine loads
    pipe = Pipeline.from_pretrained(model, backend, max_batch=max_batch, max_n=max_n, precision=precision)
    check_inputs_fit(pipe.shape, model, input, from_hr, faces)
    if faces:
        pipe.detector  # noqa: B018 - loaded before any work: a missing detector is one line
    quiet = quiet or json_
    if pipe.backend.note and not quiet:
        print(f"note: {pipe.backend.note}", file=sys.stderr)
    run = Run(pipe, Written(out, seed, temperatures, grid, overwrite, summary), ctx.command_path)
    paths = [Path(UNCONDITIONAL_STEM)]
    if pipe.shape.conditional:
        paths, problems = expand_inputs(input or [])
        for problem in problems:
            run.fail(problem.split(":")[0], problem)
    paths = accepted_paths(paths, run, check_outputs=not faces)
    run.inputs = len(paths) + len(run.failed)
    out.mkdir(parents=True, exist_ok=True)
    if faces:
        paste = "transparent" if face_only else "none" if no_paste else "photo"
        run_photos(paths, FaceSearch(min_face, max_faces, min_score), upscale, paste, run, quiet)
    else:
        run_inputs(paths, from_hr, run, quiet)
    report(run, json_, quiet)
    return run.exit_status


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, prog="cvdvae-run")


def check_inputs_fit(shape: ModelShape, model: Path, input: list[str] | None, from_hr: bool, faces: bool) -> None:
    """A conditional model needs LR images; a prior-only one takes none."""
    if shape.conditional and not input:
        raise typer.BadParameter(f"{model} super-resolves LR images: give them", param_hint="'--input'")
    if not shape.conditional and (input or from_hr or faces):
        flag = "--input" if input else "--from-hr" if from_hr else "--faces"
        raise typer.BadParameter(f"{model} is a prior-only model: it draws faces from noise alone, "
                                 "without images", param_hint=f"'{flag}'")


def check_face_flags(faces: bool, from_hr: bool, face_only: bool, no_paste: bool, photo_flags: list[str]) -> None:
    """The photo flags need --faces and agree with each other."""
    if not faces:
        if photo_flags:
            raise typer.BadParameter("applies to photos: add --faces", param_hint=f"'{photo_flags[0]}'")
        return
    if from_hr:
        raise typer.BadParameter("--faces chooses per face between the LR crop and a degraded HR crop; drop "
                                 "--from-hr", param_hint="'--from-hr'")
    if face_only and no_paste:
        raise typer.BadParameter("--face-only makes whole-photo outputs, --no-paste makes none: choose one",
                                 param_hint="'--face-only'")


def accepted_paths(paths: list[Path], run: Run, check_outputs: bool) -> list[Path]:
    """Drop inputs whose outputs exist (without --overwrite) or whose names collide (photos: their
    outputs are known, and checked, once their faces are found)."""
    seen: dict[str, Path] = {}
    keep = []
    settings = run.settings
    for path in paths:
        if path.stem in seen:
            run.fail(path, f"{path}: has the same name as {seen[path.stem]}; outputs would collide, rename one")
            continue
        seen[path.stem] = path
        planned = outputs.planned(settings.out, path.stem, settings.seed, len(settings.temperatures), settings.grid,
                                  settings.summary)
        existing = [p for p in planned if p.exists()] if check_outputs else []
        if existing and not settings.overwrite:
            run.fail(path, f"{path}: {existing[0]} exists ({len(existing)} outputs); pass --overwrite")
            continue
        keep.append(path)
    return keep


def run_inputs(paths: list[Path], from_hr: bool, run: Run, quiet: bool) -> None:
    """LR faces (or prior draws), a group of images per engine call; a group's outputs are written
    before the next group is read."""
    pipe, settings = run.pipe, run.settings
    with ProgressBar(len(paths), "inputs", disable=quiet or not paths) as progress:
        for start in range(0, len(paths), pipe.backend.max_batch):
            group = paths[start:start + pipe.backend.max_batch]
            inputs = read_inputs(group, from_hr, run, quiet)
            if inputs:
                sample_inputs(inputs, run)
            run.samples += len(inputs) * len(settings.temperatures)
            progress.update(len(group))
            progress.note(f"{run.samples / (time.perf_counter() - run.start):.2f} samples/s")


def sample_inputs(inputs: list[LRInput], run: Run) -> None:
    """Every sample of ``inputs`` written as it is drawn, ``SAMPLES_PER_PASS`` per input at a time;
    then each input's grid and summary, made from its samples as they passed."""
    settings = run.settings
    ledgers = [InputLedger(settings.grid, settings.summary) for _ in inputs]
    for first in range(0, len(settings.temperatures), SAMPLES_PER_PASS):
        temperatures = settings.temperatures[first:first + SAMPLES_PER_PASS]
        try:
            output = run.pipe(inputs, len(temperatures), settings.seed, temperatures, first_sample=first)
        except NonFiniteSamples as err:
            output = err.output
        for i, ledger in enumerate(ledgers):
            bad = output.non_finite[i]
            written = outputs.write_samples(settings.out, Path(inputs[i].name).stem, settings.seed,
                                            output.samples[i], None, frozenset(bad), first)
            run.written += map(str, written)
            ledger.add(output.finite(i), [first + k for k in bad], int(output.non_finite_values[i].sum()))
    for item, ledger in zip(inputs, ledgers):
        finish_input(item, ledger, run)


@dataclass
class InputLedger:
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


def finish_input(item: LRInput, ledger: InputLedger, run: Run) -> None:
    """The input's grid and summary when every sample is finite; a sample with NaN/Inf is never
    written (it would show as black or white pixels), and said."""
    settings, path = run.settings, Path(item.name)
    if ledger.broken:
        run.non_finite_samples += len(ledger.broken)
        run.fail(path, f"{path}: {len(ledger.broken)} of {len(settings.temperatures)} samples contain NaN/Inf "
                       f"({ledger.non_finite_values:,} values; samples {', '.join(map(str, ledger.broken))}) and "
                       f"were not written: {broken_model_advice(run.pipe.backend.precision)}")
        return
    spread = ledger.moments.summary() if settings.summary else None
    if settings.grid:
        pixels = outputs.input_grid(item.lr, item.hr, ledger.tiles, run.pipe.shape.scale, spread)
        run.written.append(str(outputs.grid_path(settings.out, path.stem, settings.seed)))
        outputs.write_png(Path(run.written[-1]), pixels)
    if spread is not None:
        run.written += map(str, outputs.write_summary(settings.out, path.stem, settings.seed, spread))


def read_inputs(paths: list[Path], from_hr: bool, run: Run, quiet: bool) -> list[LRInput]:
    if not run.pipe.shape.conditional:
        return run.pipe.prepare(None)
    inputs = []
    for path in paths:
        try:
            item = run.pipe.prepare_one(path, from_hr)
        except InputError as err:
            run.fail(path, err.describe(flag_for))
            continue
        if item.converted and not run.converted_note_shown and not quiet:
            print(f"note: {path} is {item.converted}; inputs are converted to 8-bit sRGB RGB "
                  "(16-bit scaled, transparency over white, colour profiles to sRGB)", file=sys.stderr)
            run.converted_note_shown = True
        inputs.append(item)
    return inputs


def run_photos(paths: list[Path], search: FaceSearch, upscale: float | None, paste: str, run: Run,
               quiet: bool) -> None:
    """--faces: each photo on its own (its faces are one batch). A photo that fails, for what it is
    or while it is worked on (a decoder's error, alignment, memory, the disk), is one line naming
    it, leaves none of its outputs behind, and does not stop the others."""
    run.photos = []
    with ProgressBar(len(paths), "photos", disable=quiet or not paths) as progress:
        for path in paths:
            planned: list[Path] = []
            try:
                found = run.pipe.detect_faces(path, search, upscale, paste)
                planned = check_photo_outputs(path, found, paste, run)
                result = run.pipe.sample_faces(found, run.settings.seed, run.settings.temperatures, upscale, paste)
                written = [str(p) for p in write_photo(result, run.settings.out, path.stem, run.settings.grid,
                                                       run.pipe.shape.scale, run.settings.summary)]
            except NonFiniteSamples as err:
                run.non_finite_samples += sum(len(broken) for broken in err.output.non_finite)
                run.fail(path, f"{err}; nothing was written for this photo")
            except InputError as err:
                run.fail(path, err.describe(flag_for))
            except Exception as err:  # noqa: BLE001 - one photo's failure never stops the rest
                remove_partial(planned)
                run.broken_inputs += 1
                what = "out of memory" if isinstance(err, MemoryError) else f"{type(err).__name__}: {error_reason(err)}"
                run.fail(path, f"{path}: failed while being worked on ({what}); nothing was kept for this photo")
            else:
                run.written += written
                run.photos.append({"input": str(path), **result.record(run.pipe.shape.hr_size), "outputs": written})
                run.samples += len(result.faces) * len(run.settings.temperatures)
            progress.update(1)


def remove_partial(planned: list[Path]) -> None:
    """A failed photo's outputs written so far (none of them existed before: ``check_photo_outputs``)."""
    for path in planned:
        path.unlink(missing_ok=True)


def check_photo_outputs(path: Path, found: PhotoFaces, paste: str, run: Run) -> list[Path]:
    """The photo's outputs to be: none may exist unless --overwrite. Returns those that do not
    exist yet (what a failure midway removes: an overwritten file's old content is gone anyway)."""
    settings = run.settings
    planned = photo_outputs(settings.out, path.stem, settings.seed, len(settings.temperatures), len(found.faces),
                            settings.grid, paste, settings.summary)
    existing = [p for p in planned if p.exists()]
    if existing and not settings.overwrite:
        raise InputError(f"{path}: {existing[0]} exists ({len(existing)} outputs); pass --overwrite", "exists")
    return [p for p in planned if not p.exists()]


def report(run: Run, as_json: bool, quiet: bool) -> None:
    s = run.summary()
    if as_json:
        print(json.dumps(s, indent=2))
    elif not quiet:
        engine = s["backend"] + (f" ({s['execution_provider']})" if s["execution_provider"] else "")
        print(f"{s['inputs']} inputs ({s['failed']} failed), {s['samples']} samples in {s['wall_s']:.1f} s, "
              f"{s['samples_per_s']:.2f} samples/s, {engine} {s['precision']}, seed {run.settings.seed} "
              f"-> {run.settings.out}/")


if __name__ == "__main__":
    sys.exit(main())
