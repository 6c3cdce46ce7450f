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
                "errors": self.failed, "outputs": self.written}

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


def accepted_paths(paths: list[Path], args: argparse.Namespace, run: Run) -> list[Path]:
    """Drop inputs whose outputs exist (without --overwrite) or whose names collide."""
    seen: dict[str, Path] = {}
    keep = []
    for path in paths:
        if path.stem in seen:
            run.fail(path, f"{path}: has the same name as {seen[path.stem]}; outputs would collide, rename one")
            continue
        seen[path.stem] = path
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
