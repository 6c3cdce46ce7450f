#!/usr/bin/env python3
"""Same seed, same faces on the GPU: PyTorch on CUDA against PyTorch on the CPU.

    python benchmarks/gpu_parity.py --json $OUT/parity.json

ffhq256-x8 with seeded random weights (``--demo``: the tiny model), B = 2, n = 2, the
contract's seeded noise, seeded LR images and temperatures (``export.validate``'s inputs):
- CPU fp32 against the device in fp32 with TF32 off, with TF32 on, in fp16 and in bf16 (weights
  cast, float32 islands kept): PSNR, max abs error away from mixture flips and logistic tails
  (both counted), NaN/Inf;
- the noise: ``noise_torch`` on the device against ``noise_numpy``, value for value, at the
  model's full size;
- the device's fp16 against the CPU's emulation of fp16 convolutions (float16 in, float32
  accumulation) that the export validation relies on;
- on CUDA, eager calls against a ``torch.cuda.graph`` replay at 1x1 (fp32 and bf16): equal
  outputs, and the median time of each.
Without CUDA it writes why and exits 0; ``--device cpu`` runs every comparison but the graphs
on the CPU (what the tests do).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import today  # noqa: E402
from report import FP32_MAX_ABS  # noqa: E402 - after the path set-up; FP32 judged as the benchmark judges it


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="ffhq256-x8", help="architecture with seeded random weights")
    p.add_argument("--demo", action="store_true", help="the built-in tiny model")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (the comparisons' plumbing)")
    p.add_argument("--json", type=Path, help="write the results here")
    return p


def agreement(sr: np.ndarray, reference: tuple[np.ndarray, np.ndarray, np.ndarray], tails: np.ndarray) -> dict:
    """``sr`` against the CPU FP32 reference (sr, choice, margin)."""
    from export.engine_check import away_from_flips
    from export.precision import compare

    a = compare(sr, reference[0])
    away, flips, tail = away_from_flips(sr, reference[0], reference[2], FP32_MAX_ABS, tails)
    return {"psnr_db": a.psnr_db, "max_abs": a.max_abs_error, "max_abs_away_from_flips_and_tails": away,
            "flipped_pixels": flips, "tail_pixels": tail, "non_finite": a.non_finite}


def on_device(model: Any, inputs: tuple, device: str, dtype: Any = None, tf32: bool = False) -> np.ndarray:
    """Samples of ``model`` (cast to ``dtype`` with its float32 islands) on ``device``."""
    import torch

    from cvdvae.tf32 import set_tf32

    moved = copy.deepcopy(model).to(device)
    if dtype is not None:
        moved.cast_weights(dtype)
    set_tf32(tf32)
    try:
        with torch.inference_mode():
            return moved(*_to(inputs, device)).float().cpu().numpy()
    finally:
        set_tf32(False)


def _to(inputs: tuple, device: str) -> list:
    return [None if x is None else x.to(device) for x in inputs]


def noise_parity(model: Any, device: str, seed: int = 0, n: int = 2) -> dict:
    """The device's seeded noise against numpy's, at the model's full size."""
    from cvdvae.seeding import noise_numpy, noise_torch

    dim = model.noise_layout.dim
    ours = noise_torch(seed, n, dim, device=device).cpu().numpy()
    expected = noise_numpy(seed, n, dim)
    return {"values": int(expected.size), "different": int((ours != expected).sum()),
            "max_abs": float(np.abs(ours.astype(np.float64) - expected).max())}


def graph_replay(model: Any, inputs: tuple, dtype: Any = None, calls: int = 5) -> dict:
    """Eager calls against replays of one ``torch.cuda.graph`` capture at these inputs' shape."""
    import torch

    moved = copy.deepcopy(model).cuda()
    if dtype is not None:
        moved.cast_weights(dtype)
    static = _to(inputs, "cuda")

    def timed(call: Callable[[], Any]) -> tuple[Any, float]:
        times, out = [], None
        for _ in range(calls):
            torch.cuda.synchronize()
            start = time.perf_counter()
            out = call()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return out.float().cpu().numpy(), statistics.median(times)

    with torch.inference_mode():
        eager, eager_s = timed(lambda: moved(*static))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            moved(*static)  # warm-up off the default stream, as capture requires
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = moved(*static)
        replayed, replay_s = timed(lambda: (graph.replay(), captured)[1])
    return {"equal": bool(np.array_equal(eager, replayed)), "max_abs": float(np.abs(eager - replayed).max()),
            "eager_ms": eager_s * 1000, "replay_ms": replay_s * 1000}


def parity(model: Any, device: str) -> dict:
    import torch

    from export.engine_check import logistic_tails
    from export.validate import torch_reference, validation_inputs

    inputs = validation_inputs(model, 2, 2)
    reference = torch_reference(model, inputs)
    layout = model.noise_layout
    pixel = inputs[1].reshape(-1, layout.dim)[:, layout.pixel_offset:].numpy()
    tails = logistic_tails(pixel.reshape(-1, layout.pixel_channels, layout.image_size, layout.image_size),
                           model.config.num_mixtures).reshape(*reference[2].shape)
    runs = {"fp32": on_device(model, inputs, device),
            "tf32": on_device(model, inputs, device, tf32=True),
            "fp16": on_device(model, inputs, device, torch.float16),
            "bf16": on_device(model, inputs, device, torch.bfloat16)}
    emulated = torch_reference(copy.deepcopy(model).cast_weights(torch.float16), inputs)
    results: dict[str, Any] = {"device": device, "against_cpu_fp32": {k: agreement(v, reference, tails)
                                                                      for k, v in runs.items()},
                               "fp16_against_cpu_emulation": agreement(runs["fp16"], emulated, tails),
                               "noise": noise_parity(model, device)}
    if device == "cuda":
        lr, noise, temperature = inputs
        one = (None if lr is None else lr[:1], noise[:1, :1], temperature[:1, :1])
        results["cuda_graphs"] = {"fp32": graph_replay(model, one), "bf16": graph_replay(model, one, torch.bfloat16)}
    else:
        results["cuda_graphs"] = {"skipped": f"no CUDA graphs on {device}"}
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from cvdvae.config import preset
    from cvdvae.random_weights import demo_model, random_model

    if args.device == "cuda" and not torch.cuda.is_available():
        results: dict[str, Any] = {"skipped": f"no CUDA device (torch {torch.__version__})"}
    else:
        model = demo_model() if args.demo else random_model(preset(args.preset), seed=0)
        results = {"model": "demo" if args.demo else args.preset, **parity(model.eval(), args.device)}
        if args.device == "cuda":
            results["gpu"] = torch.cuda.get_device_name(0)
    text = json.dumps({"date": today(), **results}, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
