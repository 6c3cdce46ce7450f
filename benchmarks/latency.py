#!/usr/bin/env python3
"""PyTorch vs ONNX Runtime vs TensorRT on the same model, LR images, noise and temperatures.

    python benchmarks/latency.py --preset ffhq256-x8 --n 1,8 --json benchmarks/results/mine.json

Every backend runs in its own process, so its peak host memory (RSS) is its own. Each
backend's first output is compared with PyTorch FP32 from the same run (PSNR, max abs
error) and flagged when it disagrees. Noise generation is timed apart from inference.
Achieved GFLOP/s (convolution work from ``cvdvae.flops``) is printed beside the machine's
measured matmul peak, so the gap to the hardware limit is visible.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("torch", "torch-fp16", "torch-bf16", "torch-compile", "onnxruntime", "tensorrt")
SEED, TEMPERATURE = 0, 0.8
FP32_MAX_ABS = 1e-3  # a float32 backend that strays further is flagged


# ----------------------------------------------------------------------- options
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


# ------------------------------------------------------------------- environment
def environment(threads: int) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "threads": threads, "python": platform.python_version(),
        "platform": platform.platform(), "torch": torch.__version__, "numpy": np.__version__,
    }
    for module in ("onnxruntime", "tensorrt", "cvdvae"):
        try:
            env[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - absent or broken: recorded as such
            env[module] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   compute_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda, driver=_driver())
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return None


def matmul_peak(device: str, dtype_name: str, threads: int) -> float:
    """Best GFLOP/s of a large square matmul: the practical compute ceiling of this machine."""
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    size = 8192 if device == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = math.inf
    for _ in range(5 if device == "cpu" else 20):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def available_backends() -> list[str]:
    """The default set: what runs here (torch-compile only on CUDA, where it pays off quickly)."""
    import torch

    from runtime.gpu import tensorrt_unavailable_reason

    names = ["torch"]
    if torch.cuda.is_available():
        names += ["torch-fp16", "torch-bf16", "torch-compile"]
    try:
        import onnxruntime  # noqa: F401

        names.append("onnxruntime")
    except ImportError:
        pass
    if tensorrt_unavailable_reason() is None:
        names.append("tensorrt")
    return names


# ---------------------------------------------------------------- shared inputs
def load_model(spec: dict):
    from cvdvae.config import preset
    from cvdvae.random_weights import demo_model, random_model
    from cvdvae.weights import load_model as load_weights

    if spec["demo"]:
        return demo_model()
    if spec["checkpoint"]:
        return load_weights(spec["checkpoint"], spec["vdvae"], spec["config"])
    return random_model(preset(spec["preset"]), seed=SEED)


def make_inputs(lr_size: int, batch: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded LR images [B, 3, h, w] and temperatures [n]; the noise comes from the seed."""
    lr = np.random.default_rng(batch * 1000 + n).integers(0, 256, (batch, 3, lr_size, lr_size)).astype(np.float32)
    return lr, np.full(n, TEMPERATURE, np.float32)


def percentiles(times: list[float]) -> dict[str, float]:
    ms = np.asarray(times) * 1000
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "calls": len(ms)}


def timed_calls(call, warmup: int, iters: int, min_time: float, device: str) -> tuple[list[float], Any]:
    first = None
    for _ in range(warmup):
        first = call()
    _sync(device)
    times: list[float] = []
    while len(times) < iters or sum(times) < min_time:
        start = time.perf_counter()
        out = call()
        _sync(device)
        times.append(time.perf_counter() - start)
        first = out if first is None else first
    return times, first


# ------------------------------------------------------------------------ workers
def torch_worker(spec: dict, backend: str) -> dict:
    import torch

    from cvdvae.seeding import noise_torch

    torch.set_num_threads(spec["threads"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if backend in ("torch-fp16", "torch-bf16") and device == "cpu":
        raise RuntimeError(f"{backend} needs a CUDA GPU (CPU half-precision convolutions are no baseline)")
    if device == "cuda":  # FP32 means FP32: no TF32 in the baseline
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    start = time.perf_counter()
    model = load_model(spec).to(device)
    if backend in ("torch-fp16", "torch-bf16"):
        model.cast_weights(torch.float16 if backend == "torch-fp16" else torch.bfloat16)
    runner = torch.compile(model) if backend == "torch-compile" else model
    load_s = time.perf_counter() - start
    results = []
    for batch, n in spec["shapes"]:
        lr_np, t_np = make_inputs(model.config.image_size_y, batch, n)
        lr, t = torch.from_numpy(lr_np).to(device), torch.from_numpy(t_np).to(device).expand(batch, n)
        noise_start = time.perf_counter()
        noise = noise_torch(SEED, n, model.noise_layout.dim, device=device)
        _sync(device)
        noise_s = time.perf_counter() - noise_start
        noise = noise[None].expand(batch, -1, -1)
        memory_format = torch.contiguous_format
        if device == "cpu" and backend == "torch":
            memory_format = faster_memory_format(model, lr, noise, t)
            model.to(memory_format=memory_format)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def call():
            with torch.inference_mode():
                return runner(lr, noise, t)

        times, first = timed_calls(call, spec["warmup"], spec["iters"], spec["min_time"], device)
        entry = {"batch": batch, "n": n, **percentiles(times), "noise_ms": noise_s * 1000,
                 "channels_last": memory_format == torch.channels_last, "output": first.float().cpu().numpy()}
        if device == "cuda":
            entry["device_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        results.append(entry)
    return {"device": device, "load_s": load_s, "precision": {"torch-fp16": "fp16", "torch-bf16": "bf16"}.get(backend, "fp32"),
            "shapes": results}


def faster_memory_format(model, lr, noise, t):
    """Channels-last when one timed call says it is faster here."""
    import torch

    best, choice = math.inf, torch.contiguous_format
    for fmt in (torch.contiguous_format, torch.channels_last):
        model.to(memory_format=fmt)
        start = time.perf_counter()
        with torch.inference_mode():
            model(lr, noise[:, :1], t[:, :1])
        elapsed = time.perf_counter() - start
        if elapsed < best:
            best, choice = elapsed, fmt
    return choice


def runtime_worker(spec: dict, backend: str) -> dict:
    """ONNX Runtime or TensorRT through the product's own runtime (what users run)."""
    from runtime.backends import OnnxRuntimeBackend
    from runtime.model_files import locate

    files = locate(spec["engine_dir"])
    if backend == "onnxruntime":
        runner = OnnxRuntimeBackend(files, threads=spec["threads"])
        device = "cpu" if runner.provider == "CPUExecutionProvider" else "cuda"
    else:
        from runtime.tensorrt_backend import TensorRTBackend

        runner, device = TensorRTBackend(files), "cuda"
    results = []
    for batch, n in spec["shapes"]:
        lr, t = make_inputs(files.lr_size, batch, n)
        if device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        runner.timings.noise = 0.0

        def call():
            return runner.sample(lr, SEED, 0, t)

        # The first (warm-up) call generates the noise, later calls reuse it as a run does.
        times, first = timed_calls(call, max(spec["warmup"], 1), spec["iters"], spec["min_time"], device)
        entry = {"batch": batch, "n": n, **percentiles(times), "noise_ms": runner.timings.noise * 1000,
                 "output": first}
        if device == "cuda":
            import torch

            entry["device_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        results.append(entry)
    return {"device": device, "load_s": runner.timings.load, "precision": files.precision, "shapes": results}


def run_worker(args: argparse.Namespace) -> int:
    spec = json.loads(args.spec.read_text())
    backend = args.worker
    result = torch_worker(spec, backend) if backend.startswith("torch") else runtime_worker(spec, backend)
    outputs = {f"{s['batch']}x{s['n']}": s.pop("output") for s in result["shapes"]}
    np.savez(spec["out"] + ".npz", **outputs)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(spec["out"] + ".json").write_text(json.dumps(result))
    return 0


# -------------------------------------------------------------------- the parent
def export_for(args: argparse.Namespace, workdir: Path) -> Path:
    if args.engine_dir:
        return args.engine_dir
    out = workdir / f"export-{args.precision}"
    cmd = [sys.executable, "-m", "export.cli", "--out", str(out), "--quiet", "--no-validate"]
    if args.precision != "fp32":
        cmd.append(f"--{args.precision}")
    if args.demo:
        cmd.append("--demo")
    elif args.checkpoint:
        cmd += ["--checkpoint", str(args.checkpoint)] + (["--vdvae", str(args.vdvae)] if args.vdvae else []) + \
               (["--config", str(args.config)] if args.config else [])
    else:
        weights = workdir / "random.safetensors"
        _write_random_weights(args.preset, weights)
        cmd += ["--checkpoint", str(weights), "--preset", args.preset]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    print(f"exported {out} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return out


def _write_random_weights(preset_name: str, path: Path) -> None:
    from cvdvae.config import preset
    from cvdvae.random_weights import random_model
    from cvdvae.weights import save_safetensors

    cfg = preset(preset_name)
    save_safetensors(path, random_model(cfg, seed=SEED, with_posterior=True).state_dict(), cfg)


def agreement_with(output: np.ndarray, reference: np.ndarray, precision: str) -> dict:
    """PSNR, max abs error and NaN/Inf count against torch FP32, and whether to flag it."""
    from export.precision import MIN_PSNR_DB, compare

    a = compare(output, reference)
    bad = a.non_finite > 0 or (a.max_abs_error > FP32_MAX_ABS if precision == "fp32"
                               else a.psnr_db < MIN_PSNR_DB[precision])
    return {"psnr_db": a.psnr_db, "max_abs": a.max_abs_error, "non_finite": a.non_finite, "flagged": bad}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        return run_worker(args)
    sys.path.insert(0, str(REPO))
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
    if device == "cuda":
        peaks.update(gpu_fp32_gflops=matmul_peak("cuda", "float32", args.threads),
                     gpu_fp16_gflops=matmul_peak("cuda", "float16", args.threads))
    spec = {"demo": args.demo, "checkpoint": str(args.checkpoint) if args.checkpoint else None,
            "vdvae": str(args.vdvae) if args.vdvae else None, "config": str(args.config) if args.config else None,
            "preset": args.preset, "shapes": shapes, "warmup": args.warmup, "iters": args.iters,
            "min_time": args.min_time, "threads": args.threads}
    model_config = load_model(spec).config
    work = sampling_work(model_config)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if {"onnxruntime", "tensorrt"} & set(backends):
            spec["engine_dir"] = str(export_for(args, workdir))
        raw = {}
        for backend in backends:
            spec["out"] = str(workdir / backend)
            (workdir / "spec.json").write_text(json.dumps(spec))
            proc = subprocess.run([sys.executable, __file__, "--worker", backend, "--spec", str(workdir / "spec.json")],
                                  cwd=REPO, capture_output=True, text=True)
            if proc.returncode != 0:
                reason = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                raw[backend] = {"error": reason}
                print(f"{backend}: skipped ({reason})", file=sys.stderr)
                continue
            raw[backend] = json.loads(Path(spec["out"] + ".json").read_text())
            raw[backend]["outputs"] = dict(np.load(spec["out"] + ".npz"))
        results = summarise(raw, work, peaks, env, device)
    results.update(model={"preset": None if args.checkpoint or args.demo else args.preset,
                          "checkpoint": spec["checkpoint"], "demo": args.demo, "config": model_config.to_dict(),
                          "gflop_per_sample_n1": work.flops_per_sample(1) / 1e9},
                   settings={"warmup": args.warmup, "iters": args.iters, "min_time": args.min_time,
                             "precision": args.precision, "seed": SEED, "temperature": TEMPERATURE})
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def matching_peak(device: str, precision: str) -> str:
    """The matmul peak a backend is measured against: the GPU's fp16 one for reduced precision."""
    if device == "cuda":
        return "gpu_fp32_gflops" if precision == "fp32" else "gpu_fp16_gflops"
    return "cpu_fp32_gflops"


def summarise(raw: dict, work, peaks: dict, env: dict, device: str) -> dict:
    reference = raw.get("torch", {})
    baseline = {(s["batch"], s["n"]): s for s in reference.get("shapes", [])}
    rows = []
    for backend, result in raw.items():
        if "error" in result:
            rows.append({"backend": backend, "error": result["error"]})
            continue
        for s in result["shapes"]:
            key = (s["batch"], s["n"])
            samples = s["batch"] * s["n"]
            seconds = s["median_ms"] / 1000
            flops = work.flops(s["batch"], s["n"])
            peak_key = matching_peak(result["device"], result["precision"])
            row = {"backend": backend, "device": result["device"], "precision": result["precision"],
                   "batch": s["batch"], "n": s["n"], "median_ms": s["median_ms"], "p90_ms": s["p90_ms"],
                   "p99_ms": s["p99_ms"], "calls": s["calls"], "samples_per_s": samples / seconds,
                   "gflops": flops / seconds / 1e9, "noise_ms": s["noise_ms"],
                   "noise_share": s["noise_ms"] / s["median_ms"], "load_s": result["load_s"],
                   "peak_rss_mib": result["peak_rss_mib"], "device_peak_mib": s.get("device_peak_mib")}
            if peak_key in peaks:
                row["peak_fraction"] = row["gflops"] / peaks[peak_key]
            if key in baseline:
                row["speedup"] = baseline[key]["median_ms"] / s["median_ms"]
                ref_out = raw["torch"]["outputs"][f"{key[0]}x{key[1]}"]
                row.update(agreement_with(result["outputs"][f"{key[0]}x{key[1]}"], ref_out, result["precision"]))
            if "channels_last" in s:
                row["channels_last"] = s["channels_last"]
            rows.append(row)
    return {"environment": env, "matmul_peak": peaks, "device": device, "results": rows}


def print_table(results: dict) -> None:
    env, peaks = results["environment"], results["matmul_peak"]
    print(f"machine: {env['cpu']} ({env['cpu_count']} cores, {env['threads']} threads)"
          + (f", {env['gpu']}" if env.get("gpu") else "")
          + f"; torch {env['torch']}, onnxruntime {env['onnxruntime']}, tensorrt {env['tensorrt']}")
    print("matmul peak: " + ", ".join(f"{k.replace('_gflops', '')} {v:,.0f} GFLOP/s" for k, v in peaks.items()))
    head = f"{'backend':<14}{'prec':<5}{'B':>3}{'n':>4}{'median ms':>11}{'p90':>9}{'p99':>9}{'samp/s':>8}" \
           f"{'speedup':>8}{'GFLOP/s':>9}{'%peak':>6}{'noise%':>7}{'RSS MiB':>8}{'PSNR':>7}{'max abs':>9}"
    print(head)
    for r in results["results"]:
        if "error" in r:
            print(f"{r['backend']:<14}not run: {r['error']}")
            continue
        flag = "  <-- disagrees with torch fp32" if r.get("flagged") else ""
        print(f"{r['backend']:<14}{r['precision']:<5}{r['batch']:>3}{r['n']:>4}{r['median_ms']:>11.1f}"
              f"{r['p90_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['samples_per_s']:>8.3f}{r.get('speedup', float('nan')):>8.2f}"
              f"{r['gflops']:>9.1f}{100 * r.get('peak_fraction', float('nan')):>5.0f}%{100 * r['noise_share']:>6.1f}%"
              f"{r['peak_rss_mib']:>8.0f}{r.get('psnr_db', float('nan')):>7.1f}{r.get('max_abs', float('nan')):>9.1e}"
              f"{flag}")


if __name__ == "__main__":
    sys.exit(main())
