"""``cvdvae-run``: LR faces -> seeded, diverse samples with TensorRT or ONNX Runtime."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from cvdvae.cli import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, add_common_options, run_command
from cvdvae.errors import CVDVAEError

from . import outputs
from .backends import CHOICES, Backend, open_backend
from .batching import plan
from .images import InputError, LoadedImage, expand_inputs, load_image
from .model_files import ModelFiles, locate

MAX_SEED = 2**64 - 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cvdvae-run", description=(
        "Super-resolve LR face images into n diverse samples each, reproducibly from a seed."))
    p.add_argument("model", metavar="MODEL", help="an engine.plan, a model.onnx or an export folder")
    p.add_argument("--input", "-i", nargs="+", required=True, metavar="PATH",
                   help="image files, folders or globs (PNG, JPEG, WebP, BMP)")
    p.add_argument("--n", type=int, help="samples per input (default 8, or the length of a --temperature list)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (0 .. 2^64-1)")
    p.add_argument("--temperature", default="0.8",
                   help="prior temperature, or a comma list: one per sample (a sweep)")
    p.add_argument("--out", type=Path, default=Path("outputs"), help="output folder (default outputs/)")
    p.add_argument("--from-hr", action="store_true",
                   help="inputs are HR images: make the LR input with the MATLAB bicubic degradation")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--no-grid", dest="grid", action="store_false", help="skip the per-input grid PNG")
    p.add_argument("--backend", choices=CHOICES, default="auto",
                   help="auto: TensorRT when the folder has an engine and TensorRT runs, else ONNX Runtime "
                        "(CUDA when it loads, else CPU); onnxruntime-cuda fails when CUDA cannot load")
    p.add_argument("--max-batch", type=int, help="images per engine call (default: the engine's profile; ONNX "
                                                 "Runtime: up to 4, within its memory budget on a CPU)")
    p.add_argument("--max-n", type=int, help="samples per image per call (default: the profile; ONNX Runtime 8, "
                                             "within its memory budget on a CPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_common_options(p)
    return p


def parse_temperatures(text: str, n: int | None) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not np.isfinite(v) or v < 0 for v in values):
        raise CVDVAEError(f"--temperature {text!r}: expected one value >= 0 or a comma list of them")
    if len(values) == 1:
        return values * (n or 8)
    if n is not None and n != len(values):
        raise CVDVAEError(f"--temperature lists {len(values)} values but --n is {n}: give one per sample")
    return values


@dataclass
class Run:
    """What happened, for the summary line and --json."""

    files: ModelFiles
    backend: Backend
    n: int
    seed: int
    inputs: int = 0
    written: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    samples: int = 0
    non_finite_samples: int = 0
    start: float = field(default_factory=time.perf_counter)
    converted_note_shown: bool = False

    def fail(self, path: Path | str, message: str) -> None:
        self.failed.append({"input": str(path), "error": message})
        print(f"cvdvae-run: error: {message}", file=sys.stderr)

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
    if args.n is not None and args.n < 1:
        raise CVDVAEError("--n must be at least 1")
    if not 0 <= args.seed <= MAX_SEED:
        raise CVDVAEError(f"--seed must be between 0 and {MAX_SEED}")
    temperatures = np.asarray(parse_temperatures(args.temperature, args.n), dtype=np.float32)
    files = locate(args.model)
    backend, note = open_backend(files, args.backend, max_batch=args.max_batch, max_n=args.max_n)
    quiet = args.quiet or args.json
    if note and not quiet:
        print(f"note: {note}", file=sys.stderr)
    run = Run(files, backend, len(temperatures), args.seed)
    paths, problems = expand_inputs(args.input)
    for problem in problems:
        run.fail(problem.split(":")[0], problem)
    paths = accepted_paths(paths, args, run)
    run.inputs = len(paths) + len(run.failed)
    args.out.mkdir(parents=True, exist_ok=True)
    progress = progress_bar(len(paths), quiet)
    for group in plan(len(paths), run.n, backend.max_batch, backend.max_n):
        images = load_group([paths[i] for i in group[0].images], files, args, run, quiet)
        if images:
            samples = sample_group(backend, images, group, args.seed, temperatures)
            for image, image_samples in zip(images, samples):
                write_outputs(image, image_samples, files, args, run)
        run.samples += len(images) * run.n
        progress.update(len(group[0].images))
        progress.set_postfix_str(f"{run.samples / (time.perf_counter() - run.start):.2f} samples/s")
    progress.close()
    report(run, args)
    return run.exit_status


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


def sample_group(backend: Backend, images: list[LoadedImage], calls, seed: int,
                 temperatures: np.ndarray) -> np.ndarray:
    """All samples of these images, [images, n, 3, H, W]: one call per sample chunk."""
    lr = np.stack([image.lr for image in images])
    parts = [backend.sample(lr, seed, chunk.samples.start, temperatures[chunk.samples.start:chunk.samples.stop])
             for chunk in calls]
    return np.concatenate(parts, axis=1)


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
        lr_tile = outputs.nearest_upscale(image.lr.round().astype(np.uint8), files.scale)
        hr_tile = [image.hr.transpose(1, 2, 0)] if image.hr is not None else []
        path = outputs.grid_path(args.out, image.path.stem, args.seed)
        outputs.write_png(path, outputs.grid([lr_tile, *hr_tile, *tiles]))
        run.written.append(str(path))


def progress_bar(total: int, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="input", disable=quiet or total == 0, file=sys.stderr, dynamic_ncols=True)


def report(run: Run, args: argparse.Namespace) -> None:
    s = run.summary()
    if args.json:
        print(json.dumps(s, indent=2))
    elif not args.quiet:
        engine = s["backend"] + (f" ({s['execution_provider']})" if s["execution_provider"] else "")
        print(f"{s['inputs']} inputs ({s['failed']} failed), {s['samples']} samples in {s['wall_s']:.1f} s, "
              f"{s['samples_per_s']:.2f} samples/s, {engine} {s['precision']}, seed {run.seed} "
              f"-> {args.out}/")


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(main_run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
