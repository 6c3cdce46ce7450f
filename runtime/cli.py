"""``cvdvae run`` (alias ``cvdvae-run``): LR faces -> seeded, diverse samples with TensorRT or ONNX
Runtime; with a prior-only model, faces drawn from noise alone."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional, Sequence

import numpy as np
import typer

from cvdvae.cli import (EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, Debug, Json, Overwrite, Quiet, Samples, Seed,
                        Temperatures, check_choice, command_app, examples, parse_temperatures, run_app)
from cvdvae.progress import ProgressBar

from . import outputs
from .backends import CHOICES, Backend, open_backend
from .batching import image_groups, sample_planned
from .images import InputError, LoadedImage, expand_inputs, load_image
from .model_files import ModelFiles, locate

UNCONDITIONAL_STEM = "sample"  # output names of a prior-only model: sample_s{seed}_{k:02d}.png

app = command_app("Super-resolve LR face images into n diverse samples each, reproducibly from a seed; "
                  "with a prior-only model (no LR encoder), draw n faces from noise alone.")


@app.command("run", epilog=examples(
    "cvdvae run engines/x4-fp16 --input faces/ --n 8 --seed 0 --temperature 0.8",
    "cvdvae run engines/x4-fp16 --input 'ffhq/*.png' --from-hr --temperature 0.2,0.6,1.0 --json",
    "cvdvae run engines/x4-fp16 --input photos/ --faces --n 8 --json > faces.json   # whole photos",
    "cvdvae run engines/vdvae-ffhq256-fp32 --n 16 --seed 0      # a prior-only model: faces from noise"))
def run_command(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(exists=True, metavar="MODEL", show_default=False,
                                          help="an engine.plan, a model.onnx or an export folder")],
    input: Annotated[Optional[list[str]], typer.Option(
        "--input", "-i", help="image files, folders or globs (PNG, JPEG, WebP, BMP); repeat it or give "
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
    max_faces: Annotated[Optional[int], typer.Option(min=1, help="--faces: the most confident faces kept per "
                                                                 "photo (default: all)")] = None,
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
    backend: Annotated[str, typer.Option(help=f"{', '.join(CHOICES)}; auto: TensorRT when the folder has an engine "
                                              "and TensorRT runs, else ONNX Runtime (CUDA when it loads, else "
                                              "CPU)")] = "auto",
    max_batch: Annotated[Optional[int], typer.Option(min=1, help="images per engine call (default: the engine's "
                                                                 "profile; ONNX Runtime: up to 4)")] = None,
    max_n: Annotated[Optional[int], typer.Option(min=1, help="samples per image per call (default: the profile; "
                                                             "ONNX Runtime 8)")] = None,
    quiet: Quiet = False,
    json_: Json = False,
    debug: Debug = False,
) -> int:
    args = argparse.Namespace(**{k: v for k, v in locals().items() if k not in ("ctx", "json_")}, json=json_,
                              prog=ctx.command_path)
    return main_run(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, prog="cvdvae-run")


@dataclass
class Run:
    """What happened, for the summary line and --json."""

    files: ModelFiles
    backend: Backend
    n: int
    seed: int
    prog: str = "cvdvae-run"
    inputs: int = 0
    written: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    samples: int = 0
    non_finite_samples: int = 0
    start: float = field(default_factory=time.perf_counter)
    converted_note_shown: bool = False
    photos: list[dict] | None = None  # --faces: per photo, its faces and outputs

    def fail(self, path: Path | str, message: str) -> None:
        self.failed.append({"input": str(path), "error": message})
        print(f"{self.prog}: error: {message}", file=sys.stderr)

    def summary(self) -> dict:
        wall = time.perf_counter() - self.start
        return {"inputs": self.inputs, "failed": len(self.failed), "samples": self.samples,
                "non_finite_samples": self.non_finite_samples,
                "wall_s": round(wall, 3), "samples_per_s": round(self.samples / wall, 3) if wall else None,
                "backend": self.backend.name, "execution_provider": getattr(self.backend, "provider", None),
                "cuda_graphs": getattr(self.backend, "cuda_graphs", None), "precision": self.backend.precision,
                "seed": self.seed, "n": self.n, "noise_s": round(self.backend.timings.noise, 3),
                "errors": self.failed, "outputs": self.written,
                **({"photos": self.photos} if self.photos is not None else {})}

    @property
    def exit_status(self) -> int:
        """1 when an engine produced NaN/Inf (a failure while working), else 2 for bad inputs."""
        if self.non_finite_samples:
            return EXIT_FAILURE
        return EXIT_BAD_INPUT if self.failed else EXIT_OK


def main_run(args: argparse.Namespace) -> int:
    temperatures = np.asarray(parse_temperatures(args.temperature, args.n), dtype=np.float32)
    check_choice(args.backend, CHOICES, "--backend")
    files = locate(args.model)
    check_inputs_fit(files, args)
    check_face_flags(files, args)
    detector = open_detector() if args.faces else None  # before any work: a missing detector is one line
    backend, note = open_backend(files, args.backend, max_batch=args.max_batch, max_n=args.max_n)
    quiet = args.quiet or args.json
    if note and not quiet:
        print(f"note: {note}", file=sys.stderr)
    run = Run(files, backend, len(temperatures), args.seed, args.prog)
    if files.conditional:
        paths, problems = expand_inputs(args.input)
        for problem in problems:
            run.fail(problem.split(":")[0], problem)
    else:
        paths = [Path(UNCONDITIONAL_STEM)]
    paths = accepted_paths(paths, args, run)
    run.inputs = len(paths) + len(run.failed)
    args.out.mkdir(parents=True, exist_ok=True)
    if detector is not None:
        return main_photos(paths, detector, files, temperatures, args, run)
    with ProgressBar(len(paths), "inputs", disable=quiet or not paths) as progress:
        for group in image_groups(len(paths), backend.max_batch):  # a group's grids are written before the next
            images = load_group([paths[i] for i in group], files, args, run, quiet)
            if images:
                lr = None if images[0].lr is None else np.stack([image.lr for image in images])
                samples = sample_planned(backend, lr, args.seed, temperatures)
                for image, image_samples in zip(images, samples):
                    write_outputs(image, image_samples, files, args, run)
            run.samples += len(images) * run.n
            progress.update(len(group))
            progress.note(f"{run.samples / (time.perf_counter() - run.start):.2f} samples/s")
    report(run, args)
    return run.exit_status


def check_inputs_fit(files: ModelFiles, args: argparse.Namespace) -> None:
    """A conditional model needs LR images; a prior-only one takes none."""
    if files.conditional and not args.input:
        raise typer.BadParameter(f"{args.model} super-resolves LR images: give them", param_hint="'--input'")
    if not files.conditional and (args.input or args.from_hr):
        flag = "--input" if args.input else "--from-hr"
        raise typer.BadParameter(f"{args.model} is a prior-only model: it draws faces from noise alone, "
                                 "without images", param_hint=f"'{flag}'")


def check_face_flags(files: ModelFiles, args: argparse.Namespace) -> None:
    """The photo flags need --faces, a conditional model, and agree with each other."""
    if not args.faces:
        given = [flag for flag, value in (("--max-faces", args.max_faces), ("--upscale", args.upscale),
                                          ("--face-only", args.face_only), ("--no-paste", args.no_paste),
                                          ("--min-face", args.min_face != 20),
                                          ("--min-score", args.min_score != 0.9)) if value]
        if given:
            raise typer.BadParameter("applies to photos: add --faces", param_hint=f"'{given[0]}'")
        return
    if not files.conditional:
        raise typer.BadParameter(f"{args.model} is a prior-only model: it takes no photos", param_hint="'--faces'")
    if args.from_hr:
        raise typer.BadParameter("--faces chooses per face between the LR crop and a degraded HR crop; drop "
                                 "--from-hr", param_hint="'--from-hr'")
    if args.face_only and args.no_paste:
        raise typer.BadParameter("--face-only makes whole-photo outputs, --no-paste makes none: choose one",
                                 param_hint="'--face-only'")


def accepted_paths(paths: list[Path], args: argparse.Namespace, run: Run) -> list[Path]:
    """Drop inputs whose outputs exist (without --overwrite) or whose names collide (photos: their
    outputs are known, and checked, once their faces are found)."""
    seen: dict[str, Path] = {}
    keep = []
    for path in paths:
        if path.stem in seen:
            run.fail(path, f"{path}: has the same name as {seen[path.stem]}; outputs would collide, rename one")
            continue
        seen[path.stem] = path
        if args.faces:
            keep.append(path)
            continue
        existing = [p for p in outputs.planned(args.out, path.stem, args.seed, run.n, args.grid) if p.exists()]
        if existing and not args.overwrite:
            run.fail(path, f"{path}: {existing[0]} exists ({len(existing)} outputs); pass --overwrite")
            continue
        keep.append(path)
    return keep


def load_group(paths: list[Path], files: ModelFiles, args: argparse.Namespace, run: Run,
               quiet: bool) -> list[LoadedImage]:
    if not files.conditional:
        return [LoadedImage(path, None, None, None) for path in paths]
    images = []
    for path in paths:
        try:
            image = load_image(path, files.lr_size, files.hr_size, args.from_hr)
        except InputError as err:
            run.fail(path, str(err))
            continue
        if image.converted_from and not run.converted_note_shown and not quiet:
            print(f"note: {path} is {image.converted_from}; inputs that are not 8-bit RGB are converted to RGB "
                  "(alpha dropped, 16-bit scaled to 8-bit)", file=sys.stderr)
            run.converted_note_shown = True
        images.append(image)
    return images


def write_outputs(image: LoadedImage, samples: np.ndarray, files: ModelFiles, args: argparse.Namespace,
                  run: Run) -> None:
    """Every finite sample as a PNG, and the grid when all are; a sample with NaN/Inf is never
    written (it would show as black or white pixels), and said."""
    broken = outputs.non_finite_samples(samples)
    if broken:
        values = int((~np.isfinite(samples)).sum())
        run.non_finite_samples += len(broken)
        run.fail(image.path, f"{image.path}: {len(broken)} of {len(samples)} samples contain NaN/Inf ({values:,} "
                             f"values; samples {', '.join(map(str, broken))}) and were not written: the engine is "
                             "numerically broken (fp16 overflow?); re-export in fp32 or --bf16")
    tiles = []
    for k, sample in enumerate(samples):
        if k in broken:
            continue
        pixels = outputs.to_uint8(sample)
        path = outputs.sample_path(args.out, image.path.stem, args.seed, k)
        outputs.write_png(path, pixels)
        run.written.append(str(path))
        tiles.append(pixels)
    if args.grid and not broken:
        lr_tile = [] if image.lr is None else [outputs.nearest_upscale(image.lr.round().astype(np.uint8),
                                                                        files.scale)]
        hr_tile = [image.hr.transpose(1, 2, 0)] if image.hr is not None else []
        path = outputs.grid_path(args.out, image.path.stem, args.seed)
        outputs.write_png(path, outputs.grid([*lr_tile, *hr_tile, *tiles]))
        run.written.append(str(path))


def open_detector():
    from .faces.detector import FaceDetector

    return FaceDetector.from_folder()


def main_photos(paths: list[Path], detector, files: ModelFiles, temperatures: np.ndarray,
                args: argparse.Namespace, run: Run) -> int:
    """--faces: each photo on its own (its faces are one batch), a photo that fails does not stop the others."""
    from .faces.photos import PhotoOptions, super_resolve_photo

    paste = "transparent" if args.face_only else "none" if args.no_paste else "photo"
    options = PhotoOptions(args.out, args.seed, temperatures, args.upscale or float(files.scale), args.min_face,
                           args.max_faces, args.min_score, paste, args.grid, args.overwrite)
    run.photos = []
    with ProgressBar(len(paths), "photos", disable=args.quiet or args.json or not paths) as progress:
        for path in paths:
            try:
                result = super_resolve_photo(path, detector, run.backend, files.lr_size, files.hr_size, options)
            except InputError as err:
                run.fail(path, str(err))
            else:
                record_photo(result, files, options, run)
            progress.update(1)
    report(run, args)
    return run.exit_status


def record_photo(result, files: ModelFiles, options, run: Run) -> None:
    """Add one photo's ``PhotoResult`` to the run."""
    run.photos.append(result.report(options.upscale, files.hr_size))
    run.written += map(str, result.written)
    run.samples += len(result.faces) * run.n
    if result.non_finite_samples:
        run.non_finite_samples += result.non_finite_samples
        run.fail(result.path, f"{result.path}: {result.non_finite_samples} face samples contain NaN/Inf; nothing "
                              "was written for this photo: the engine is numerically broken (fp16 overflow?)")


def report(run: Run, args: argparse.Namespace) -> None:
    s = run.summary()
    if args.json:
        print(json.dumps(s, indent=2))
    elif not args.quiet:
        engine = s["backend"] + (f" ({s['execution_provider']})" if s["execution_provider"] else "")
        print(f"{s['inputs']} inputs ({s['failed']} failed), {s['samples']} samples in {s['wall_s']:.1f} s, "
              f"{s['samples_per_s']:.2f} samples/s, {engine} {s['precision']}, seed {run.seed} "
              f"-> {args.out}/")


if __name__ == "__main__":
    sys.exit(main())
