"""One backend timed in its own process (so its peak RSS is its own), on shared inputs.

Every worker gets the same spec: model, shapes, seed, temperature, threads, TF32. It writes
its first output per shape (for the agreement check in the parent) and its timings, and
counts the samples holding NaN/Inf over every call it made.
"""

from __future__ import annotations

import json
import math
import resource
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from machine import sync

SEED, TEMPERATURE = 0, 0.8


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


def timed_calls(call: Callable[[], Any], count_non_finite: Callable[[Any], int], spec: dict, device: str,
                warmup: int) -> tuple[list[float], Any, int]:
    """(seconds per timed call, the first output, samples with NaN/Inf over every call)."""
    first, broken = None, 0
    for _ in range(warmup):
        first = call()
        broken += count_non_finite(first)
    sync(device)
    times: list[float] = []
    while len(times) < spec["iters"] or sum(times) < spec["min_time"]:
        start = time.perf_counter()
        out = call()
        sync(device)
        times.append(time.perf_counter() - start)
        broken += count_non_finite(out)
        first = out if first is None else first
    return times, first, broken


def non_finite_samples(out: Any) -> int:
    """Samples the engine counted NaN/Inf in: ``out`` is (samples, counts [B, n]), numpy or torch."""
    return int((out[1] > 0).sum())


def torch_worker(spec: dict, backend: str) -> dict:
    import torch

    from cvdvae.seeding import noise_torch
    from cvdvae.tf32 import set_tf32

    torch.set_num_threads(spec["threads"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if backend in ("torch-fp16", "torch-bf16") and device == "cpu":
        raise RuntimeError(f"{backend} needs a CUDA GPU (CPU half-precision convolutions are no baseline)")
    set_tf32(spec["tf32"])
    start = time.perf_counter()
    model = load_model(spec).to(device)
    if backend in ("torch-fp16", "torch-bf16"):
        model.cast_weights(torch.float16 if backend == "torch-fp16" else torch.bfloat16)
    runner = torch.compile(model.sample) if backend == "torch-compile" else model.sample  # (sr, non_finite)
    load_s = time.perf_counter() - start
    results = []
    for batch, n in spec["shapes"]:
        lr_np, t_np = make_inputs(model.config.image_size_y, batch, n)
        lr, t = torch.from_numpy(lr_np).to(device), torch.from_numpy(t_np).to(device).expand(batch, n)
        noise_start = time.perf_counter()
        noise = noise_torch(SEED, n, model.noise_layout.dim, device=device)
        sync(device)
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

        # The baseline keeps its mixture scores, so the others' mixture flips can be told apart.
        params: dict = {}
        hook = model.decoder.out_net.register_forward_hook(lambda m, i, o: params.update(last=o)) \
            if backend == "torch" else None
        compile_start = time.perf_counter()
        times, first, broken = timed_calls(call, non_finite_samples, spec, device, spec["warmup"])
        entry = {"batch": batch, "n": n, **percentiles(times), "noise_ms": noise_s * 1000,
                 "non_finite_samples": broken, "channels_last": memory_format == torch.channels_last,
                 "output": first[0].float().cpu().numpy()}
        if hook is not None:
            hook.remove()
            entry["margin"], entry["tails"] = mixture_margins(model, params["last"], noise, batch, n)
        if backend == "torch-compile":  # the warm-up calls compile; reported apart from the timed calls
            entry["warmup_s"] = time.perf_counter() - compile_start - sum(times)
        if device == "cuda":
            entry["device_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        results.append(entry)
    precision = {"torch-fp16": "fp16", "torch-bf16": "bf16"}.get(backend, "fp32")
    return {"device": device, "load_s": load_s, "precision": precision, "tf32": spec["tf32"] and device == "cuda",
            "shapes": results}


def mixture_margins(model, params, noise, batch: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """[B, n, H, W] each: how near each pixel's Gumbel-max mixture choice was to a tie, and
    whether its logistic draw is in the float32-ill-conditioned tail."""
    from cvdvae.dmol import mixture_margin
    from export.engine_check import logistic_tails

    layout, m = model.noise_layout, model.config.num_mixtures
    size = (batch, n, layout.image_size, layout.image_size)
    pixel = noise.reshape(-1, layout.dim)[:, layout.pixel_offset:]
    pixel = pixel.reshape(-1, layout.pixel_channels, layout.image_size, layout.image_size)
    margin = mixture_margin(params.float(), pixel.float(), m).reshape(size).cpu().numpy()
    return margin, logistic_tails(pixel.float().cpu().numpy(), m).reshape(size)


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
    """An exported graph through the product's own runtime (what users run): the backend ``backend``
    names, called through the one sampling path."""
    from runtime.backends import open_backend
    from runtime.model_files import locate
    from runtime.sampling import sample_images

    files = locate(spec["engine_dir"])
    bf16 = backend.endswith("-bf16")  # openvino-bf16: OpenVINO computing in bf16
    runner = open_backend(files, backend.removesuffix("-bf16"), threads=spec["threads"], tf32=spec["tf32"],
                          precision="bf16" if bf16 else "auto")
    device = "cpu" if runner.provider in ("CPU", "CPUExecutionProvider") else "cuda"
    if backend == "onnxruntime-cuda" and device != "cuda":
        raise RuntimeError(f"onnxruntime-cuda ran on {runner.provider}")
    tf32 = bool(files.meta["engine"].get("tf32")) if backend == "tensorrt" else spec["tf32"] and device == "cuda"
    results = []
    for batch, n in spec["shapes"]:
        lr, t = make_inputs(files.lr_size, batch, n)
        if device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        runner.timings.noise = 0.0

        def call():  # in calls within the backend's limits, as cvdvae run makes them
            return sample_images(runner, lr, SEED, t)

        # The first (warm-up) call generates the noise, later calls reuse it as a run does.
        warmup = max(spec["warmup"], 1)
        times, first, broken = timed_calls(call, non_finite_samples, spec, device, warmup)
        entry = {"batch": batch, "n": n, **percentiles(times), "non_finite_samples": broken, "output": first.samples,
                 "noise_ms": runner.timings.noise * 1000 / (warmup + len(times))}  # per call, made or reused
        if device == "cuda":
            import torch

            entry["device_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        results.append(entry)
    return {"device": device, "load_s": runner.timings.load, "precision": runner.precision,  # as the engine reports
            "fp32_groups": list(runner.fp32_groups),
            "provider": runner.provider, "tf32": tf32, "cuda_graphs": runner.cuda_graphs,
            "samples_per_call": runner.max_batch * runner.max_n, "shapes": results}


def run_worker(backend: str, spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    result = torch_worker(spec, backend) if backend.startswith("torch") else runtime_worker(spec, backend)
    outputs = {f"{s['batch']}x{s['n']}": s.pop("output") for s in result["shapes"]}
    for s in result["shapes"]:
        outputs.update({f"{s['batch']}x{s['n']}-{key}": s.pop(key) for key in ("margin", "tails") if key in s})
    np.savez(spec["out"] + ".npz", **outputs)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(spec["out"] + ".json").write_text(json.dumps(result))
    return 0
