#!/usr/bin/env python3
"""PyTorch vs ONNX Runtime vs TensorRT on the same model, LR images, noise and temperatures.

    python benchmarks/latency.py --preset ffhq256-x8 --n 1,8 --json benchmarks/results/mine.json

Every backend runs in its own process (``workers.py``), so its peak host memory (RSS) is its
own. Each backend's first output is compared with PyTorch FP32 from the same run (PSNR, max
abs error) and flagged when it disagrees or any sample held NaN/Inf (``report.py``). Noise
generation is timed apart from inference. Achieved GFLOP/s (convolution work from
``cvdvae.flops``) is printed beside the machine's measured matmul peak (``machine.py``).
TF32 is off everywhere unless ``--tf32``; each row says which. The JSON is rewritten after
each backend (``backends_left`` names those still to run), so a run stopped midway keeps what
it had, and every worker's stderr is kept whole in ours.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import environment, matmul_peak, today  # noqa: E402 - after the path set-up
from report import print_table, summarise  # noqa: E402
from workers import SEED, TEMPERATURE, load_model, run_worker  # noqa: E402

BACKENDS = ("torch", "torch-fp16", "torch-bf16", "torch-compile", "openvino", "openvino-bf16", "onnxruntime",
            "onnxruntime-cuda", "tensorrt")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default="ffhq256-x8", help="architecture with seeded random weights")
    src.add_argument("--checkpoint", type=Path, help="real weights (.ckpt, .safetensors, .th)")
    src.add_argument("--demo", action="store_true", help="the built-in tiny-x4 model (smoke tests)")
    p.add_argument("--vdvae", type=Path)
    p.add_argument("--config", type=Path)
    p.add_argument("--backends", help=f"comma list of {', '.join(BACKENDS)} (default: every one available)")
    p.add_argument("--batch", default="1", help="comma list of B (images per call)")
    p.add_argument("--n", default="1,8", help="comma list of n (samples per image)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="graph precision for onnxruntime and tensorrt")
    p.add_argument("--tf32", action="store_true", help="allow TF32 on CUDA (off: FP32 means FP32)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3, help="timed calls per shape (at least)")
    p.add_argument("--min-time", type=float, default=0.0, help="keep timing until this many seconds")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for every backend")
    p.add_argument("--engine-dir", type=Path, help="reuse this cvdvae-export folder instead of exporting")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    return p


def int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise SystemExit(f"error: expected a comma list of positive integers, got {text!r}")
    return values


def available_backends() -> list[str]:
    """The default set: every backend that runs here."""
    import torch

    from runtime.backends.gpu import tensorrt_unavailable_reason

    names = ["torch", "torch-compile"]
    if torch.cuda.is_available():
        names += ["torch-fp16", "torch-bf16"]
    try:
        import openvino  # noqa: F401

        from runtime.backends.cpu_features import bf16_missing_here

        names.append("openvino")
        if bf16_missing_here() is None:
            names.append("openvino-bf16")
    except ImportError:
        pass
    try:
        import onnxruntime

        names.append("onnxruntime")
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            names.append("onnxruntime-cuda")
    except ImportError:
        pass
    if tensorrt_unavailable_reason() is None:
        names.append("tensorrt")
    return names


def export_for(workdir: Path, *, precision: str = "fp32", tf32: bool = False, demo: bool = False,
               checkpoint: Path | None = None, vdvae: Path | None = None, config: Path | None = None,
               preset: str = "ffhq256-x8") -> Path:
    """The model exported (unvalidated: the benchmark compares every backend itself) into ``workdir``,
    with an engine where TensorRT and a GPU exist. Without weights: ``preset`` with seeded random ones."""
    from export.engine import EngineSettings
    from export.tensorrt import BuilderSettings
    from export.exporter import ExportSpec, export_folder
    from export.model_source import ModelChoice

    if not demo and checkpoint is None:
        checkpoint = workdir / "random.safetensors"
        _write_random_weights(preset, checkpoint)
        vdvae = config = None
    choice = ModelChoice(demo=demo, checkpoint=checkpoint, vdvae=vdvae, config=config,
                         preset=None if demo or config else preset)
    spec = ExportSpec(choice, precision, validate=False, out=workdir / f"export-{precision}",
                      engine_settings=EngineSettings(BuilderSettings(tf32=tf32, progress=False), validate=False))
    start = time.perf_counter()
    exported = export_folder(spec, log=lambda message: None, warn=lambda message: print(message, file=sys.stderr))
    print(f"exported {exported.folder} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return exported.folder


def _write_random_weights(preset_name: str, path: Path) -> None:
    from cvdvae.config import preset
    from cvdvae.random_weights import random_model
    from cvdvae.weights import save_safetensors

    cfg = preset(preset_name)
    save_safetensors(path, random_model(cfg, seed=SEED, with_posterior=True).state_dict(), cfg)


def run_backends(backends: list[str], spec: dict, workdir: Path, measured: Callable[[dict], None]) -> dict:
    """Each backend in its own worker process, one after the other; ``measured(raw)`` is called
    after each one, so a run stopped midway keeps what it had. Every worker's stderr goes to ours
    whole."""
    raw: dict = {}
    for backend in backends:
        spec["out"] = str(workdir / backend)
        (workdir / "spec.json").write_text(json.dumps(spec))
        proc = subprocess.run([sys.executable, __file__, "--worker", backend, "--spec", str(workdir / "spec.json")],
                              cwd=REPO, capture_output=True, text=True)
        if proc.stderr.strip():
            print(f"--- {backend} worker stderr ---\n{proc.stderr.rstrip()}", file=sys.stderr)
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            raw[backend] = {"error": reason}
            print(f"{backend}: skipped ({reason})", file=sys.stderr)
        else:
            raw[backend] = json.loads(Path(spec["out"] + ".json").read_text())
            raw[backend]["outputs"] = dict(np.load(spec["out"] + ".npz"))
        measured(raw)
    return raw


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        return run_worker(args.worker, args.spec)
    shapes = [(b, n) for b in int_list(args.batch) for n in int_list(args.n)]
    backends = args.backends.split(",") if args.backends else available_backends()
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise SystemExit(f"error: unknown backends {sorted(unknown)}; choose from {', '.join(BACKENDS)}")
    if "torch" not in backends:
        backends = ["torch", *backends]  # the baseline every other figure is relative to
    import torch

    from cvdvae.flops import sampling_work

    env = environment(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peaks = {"cpu_fp32_gflops": matmul_peak("cpu", "float32", args.threads)}
    if "openvino-bf16" in backends:  # the physical limit of the bf16 rows, measured the same way
        peaks["cpu_bf16_gflops"] = matmul_peak("cpu", "bfloat16", args.threads)
    if device == "cuda":
        peaks.update(gpu_fp32_gflops=matmul_peak("cuda", "float32", args.threads),
                     gpu_fp16_gflops=matmul_peak("cuda", "float16", args.threads))
    # Workers run in the repository: paths are passed absolute.
    spec = {"demo": args.demo, "checkpoint": str(args.checkpoint.resolve()) if args.checkpoint else None,
            "vdvae": str(args.vdvae.resolve()) if args.vdvae else None,
            "config": str(args.config.resolve()) if args.config else None,
            "preset": args.preset, "shapes": shapes, "warmup": args.warmup, "iters": args.iters,
            "min_time": args.min_time, "threads": args.threads, "tf32": args.tf32}
    model_config = load_model(spec).config
    work = sampling_work(model_config)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if any(not b.startswith("torch") for b in backends):
            spec["engine_dir"] = str(args.engine_dir or export_for(
                workdir, precision=args.precision, tf32=args.tf32, demo=args.demo, checkpoint=args.checkpoint,
                vdvae=args.vdvae, config=args.config, preset=args.preset))
        about = {"model": {"preset": None if args.checkpoint or args.demo else args.preset,
                           "checkpoint": spec["checkpoint"], "demo": args.demo, "config": model_config.to_dict(),
                           "gflop_per_sample_n1": work.flops_per_sample(1) / 1e9},
                 "settings": {"warmup": args.warmup, "iters": args.iters, "min_time": args.min_time,
                              "precision": args.precision, "tf32": args.tf32, "seed": SEED,
                              "temperature": TEMPERATURE}}

        def measured(raw: dict) -> dict:
            results = {"date": today(), **summarise(raw, work, peaks, env, device), **about,
                       "backends_left": [b for b in backends if b not in raw]}
            if args.json:
                write_json(args.json, results)
            return results

        results = measured(run_backends(backends, spec, workdir, measured))
    print_table(results)
    return 0


def write_json(path: Path, results: dict) -> None:
    """Atomically: a reader (or a run killed while writing) never sees half a file."""
    from cvdvae.fileio import write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, (json.dumps(results, indent=2) + "\n").encode())


if __name__ == "__main__":
    sys.exit(main())
