#!/usr/bin/env python3
"""Which ops must stay float32 when OpenVINO runs the sampler in bf16 on a CPU: a sensitivity study.

    python benchmarks/bf16_study.py --json benchmarks/results/cpu-2core-intel-xeon-bf16-study.json \\
        --md benchmarks/results/cpu-2core-intel-xeon-bf16-study.md

One exported graph (ffhq256-x8 with seeded random weights unless ``--engine-dir``), one LR
image, the same seeded noise, B = 1 and n samples. It starts from all-bf16 and returns groups of
ops (``runtime.backends.openvino_precision``: residual adds, latent draws, the mixture head, the
decoder's first and last resolutions, the LR encoder) to float32 with OpenVINO's own pinning,
the ``DisablePrecisionConversion`` runtime attribute. Each configuration against FP32 on the
same inputs:
- s/sample (after a warm-up call), in calls of the product's size;
- PSNR and max abs error, the latter also away from flipped mixture choices and logistic tails;
- the fraction of pixels whose mixture choice flipped (the graph's own argmax, added as an output);
- LPIPS (AlexNet, v0.1) per sample, mean and worst;
- NaN/Inf values, and the layers OpenVINO reports running in each precision.
``--int8`` also tries NNCF's post-training int8 on the convolutions only (see ``int8_attempt``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from latency import export_for  # noqa: E402 - after the path set-up
from machine import environment, today  # noqa: E402
from workers import SEED, TEMPERATURE, make_inputs  # noqa: E402

CONFIGS: list[tuple[str, str, tuple[str, ...]]] = [
    ("fp32", "fp32", ()),
    ("bf16", "bf16", ()),
    ("bf16, residual adds fp32", "bf16", ("residual",)),
    ("bf16, latent draws fp32", "bf16", ("latents",)),
    ("bf16, mixture head fp32", "bf16", ("mixture_head",)),
    ("bf16, first+last resolution fp32", "bf16", ("edge_resolutions",)),
    ("bf16, LR encoder fp32", "bf16", ("lr_encoder",)),
    ("bf16, residual+latents fp32", "bf16", ("residual", "latents")),
    ("bf16, residual+latents+head fp32", "bf16", ("residual", "latents", "mixture_head")),
    ("bf16, all five groups fp32", "bf16", ("residual", "latents", "mixture_head", "edge_resolutions", "lr_encoder")),
    ("bf16, residual+stream writes fp32", "bf16", ("residual", "stream_writes")),
    ("bf16, residual+head+stream writes fp32", "bf16", ("residual", "mixture_head", "stream_writes")),
    ("bf16, residual+latents+head+stream writes fp32", "bf16",
     ("residual", "latents", "mixture_head", "stream_writes")),
    # What an fp16/bf16 GPU graph keeps in float32 (export.precision.FP32_ISLANDS): its bound's basis.
    ("bf16, latents+head fp32 (a bf16 graph's islands)", "bf16", ("latents", "mixture_head")),
    ("fp16", "fp16", ()),
    ("fp16, latents+head fp32 (an fp16 graph's islands)", "fp16", ("latents", "mixture_head")),
]
CALL_SAMPLES = 4  # samples per call, as the OpenVINO backend calls FFHQ-256 (runtime.backends.openvino)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="ffhq256-x8", help="architecture with seeded random weights")
    p.add_argument("--engine-dir", type=Path, help="reuse this cvdvae-export folder (FP32) instead of exporting")
    p.add_argument("--n", type=int, default=8, help="samples of the one LR image")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=2, help="timed runs of the n samples per configuration (best kept)")
    p.add_argument("--configs", help="comma list of configuration numbers to run (default: all; 0 always runs)")
    p.add_argument("--int8", action="store_true", help="also try NNCF int8 on the convolutions")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--md", type=Path, help="write the results table (markdown) here")
    return p


# ---------------------------------------------------------------------------------- running
def pinned_model(ov: Any, core: Any, path: Path, groups: tuple[str, ...]) -> Any:
    """The graph with ``groups`` pinned to float32, whatever the mix (the backend refuses the mixes
    OpenVINO fails on; the study measures them)."""
    from runtime.backends.openvino_precision import classify, pin_to_fp32

    model = core.read_model(str(path))
    found = classify(model)
    return pin_to_fp32(ov, model, set().union(*(found[name] for name in groups)))


def compiled_with_choice(ov: Any, core: Any, model: Any, precision: str, threads: int) -> Any:
    """``model`` compiled as the backend compiles it, with the mixture choice (the argmax's
    index output) as an extra output."""
    from runtime.backends.openvino import compile_config

    argmax = [op for op in model.get_ordered_ops() if op.get_type_name() == "TopK"]
    if len(argmax) != 1:
        raise SystemExit(f"expected one TopK (the mixture argmax) in the graph, found {len(argmax)}")
    model.add_outputs([argmax[0].output(1)])
    return core.compile_model(model, "CPU", compile_config(precision, threads))


def run(compiled: Any, feeds: dict[str, np.ndarray], n: int, repeats: int = 1) -> tuple[dict[str, np.ndarray], float]:
    """(sr [1, n, 3, H, W], choice [n, H, W], non_finite [1, n]) and seconds per sample (the best
    of ``repeats`` runs), timed after one warm-up call, in calls of ``CALL_SAMPLES`` samples."""
    request = compiled.create_infer_request()

    def call(first: int) -> tuple[np.ndarray, ...]:
        part = {**feeds, "noise": feeds["noise"][:, first:first + CALL_SAMPLES],
                "temperature": feeds["temperature"][:, first:first + CALL_SAMPLES]}
        out = request.infer(part)
        choice = out[compiled.outputs[-1]]  # [samples, 1, H, W]
        return out[compiled.output("sr")].copy(), out[compiled.output("non_finite")].copy(), choice[:, 0].copy()

    call(0)
    seconds = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        parts = [call(first) for first in range(0, n, CALL_SAMPLES)]
        seconds = min(seconds, (time.perf_counter() - start) / n)
    sr, non_finite, choice = zip(*parts)
    return {"sr": np.concatenate(sr, axis=1), "non_finite": np.concatenate(non_finite, axis=1),
            "choice": np.concatenate(choice)}, seconds


# ---------------------------------------------------------------------------------- metrics
def agreement(out: dict[str, np.ndarray], ref: dict[str, np.ndarray], tails: np.ndarray, lpips: Any) -> dict:
    """Against the FP32 run on the same inputs (``tails`` [n, H, W]: ill-conditioned logistic draws)."""
    import torch

    from export.precision import compare

    a = compare(out["sr"], ref["sr"])
    per_sample = [compare(out["sr"][:, i], ref["sr"][:, i]).psnr_db for i in range(out["sr"].shape[1])]
    flipped = out["choice"] != ref["choice"]  # [n, H, W]
    per_pixel = np.abs(out["sr"][0].astype(np.float64) - ref["sr"][0]).max(axis=1)  # [n, H, W]
    kept = np.where(flipped | tails, 0.0, np.nan_to_num(per_pixel, nan=np.inf))
    with torch.no_grad():
        distances = lpips(torch.from_numpy(out["sr"][0]).float(), torch.from_numpy(ref["sr"][0]).float())
    distances = distances.flatten().numpy()
    return {"psnr_db": a.psnr_db, "psnr_worst_sample_db": min(per_sample), "max_abs": a.max_abs_error,
            "max_abs_away_from_flips_and_tails": float(kept.max()),
            "flipped_fraction": float(flipped.mean()), "tail_fraction": float(tails.mean()),
            "lpips_mean": float(distances.mean()), "lpips_max": float(distances.max()),
            "non_finite": int(a.non_finite + (out["non_finite"] > 0).sum())}


def unrelated_psnr(samples: np.ndarray) -> float:
    """PSNR between FP32 samples of the same LR image with different noise (consecutive pairs,
    the best): what an engine that lost the noise's meaning would score."""
    from export.precision import compare

    return max(compare(a, b).psnr_db for a, b in zip(samples[:-1], samples[1:]))


def pixel_tails(noise: np.ndarray, files: Any) -> np.ndarray:
    """[n, H, W]: where the logistic draw is float32-ill-conditioned (``export.engine_check``)."""
    from cvdvae.config import config_from_mapping
    from cvdvae.noise_layout import NoiseLayout
    from export.engine_check import logistic_tails

    layout = NoiseLayout.from_config(config_from_mapping(files.meta["config"])[0])
    pixel = noise[0][:, layout.pixel_offset:].reshape(-1, layout.pixel_channels, layout.image_size,
                                                      layout.image_size)
    return logistic_tails(pixel, layout.pixel_channels - 3)


# ---------------------------------------------------------------------------------- int8
def int8_attempt(ov: Any, core: Any, path: Path, feeds: dict[str, np.ndarray], threads: int, n: int,
                 repeats: int) -> dict:
    """NNCF's post-training int8 on the convolutions only, calibrated on the graph's own inputs
    (16 LR images and standard normal noise: no trained weights or data set needed)."""
    try:
        import nncf
    except ImportError:
        return {"failed": "NNCF is not installed (pip install nncf)"}
    import logging

    from runtime.backends.openvino import compile_config
    from runtime.backends.openvino_precision import runtime_precisions

    nncf.set_log_level(logging.WARNING)
    rng = np.random.default_rng(1)
    items = [{"lr": rng.integers(0, 256, feeds["lr"].shape).astype(np.float32),
              "noise": rng.standard_normal(feeds["noise"][:, :1].shape).astype(np.float32),
              "temperature": np.full((1, 1), TEMPERATURE, np.float32)} for _ in range(16)]
    start = time.perf_counter()
    quantized = nncf.quantize(core.read_model(str(path)), nncf.Dataset(items), subset_size=len(items),
                              ignored_scope=nncf.IgnoredScope(types=["Add", "Multiply", "Exp", "MatMul"],
                                                              validate=False),
                              fast_bias_correction=True)
    took = time.perf_counter() - start
    argmax = [op for op in quantized.get_ordered_ops() if op.get_type_name() == "TopK"]
    quantized.add_outputs([argmax[0].output(1)])
    compiled = core.compile_model(quantized, "CPU", compile_config("fp32", threads))
    out, seconds = run(compiled, feeds, n, repeats)
    return {"out": out, "s_per_sample": seconds, "load_s": took, "layers": runtime_precisions(compiled)}


# ---------------------------------------------------------------------------------- report
def markdown(results: dict) -> str:
    rows = results["configs"]
    env = results["environment"]
    lines = [f"# bf16 sensitivity study: {results['model']}, B = 1, n = {results['n']}, {env['threads']} threads",
             "", f"Machine: {env['cpu']}; OpenVINO {results['openvino']}. Pinning: "
             "`DisablePrecisionConversion` runtime attribute (through the IR). Agreement is against the "
             "FP32 run on the same LR image and noise.", "",
             "| configuration | s/sample | x FP32 | PSNR dB | max abs | max abs (no flips/tails) | flipped % | "
             "LPIPS mean | LPIPS max | NaN/Inf | convolutions run in | element-wise run in |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    base = rows[0]["s_per_sample"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['name']} | OpenVINO failed: {r['failed']} |" + " |" * 10)
            continue
        a = r.get("agreement") or {}
        layers = r.get("layers") or {}
        conv, elt = layers.get("Convolution", {}), layers.get("Eltwise", {})
        lines.append(
            f"| {r['name']} | {r['s_per_sample']:.2f} | {base / r['s_per_sample']:.2f} | "
            f"{a.get('psnr_db', math.inf):.1f} | {a.get('max_abs', 0):.3f} | "
            f"{a.get('max_abs_away_from_flips_and_tails', 0):.3f} | {100 * a.get('flipped_fraction', 0):.2f} | "
            f"{a.get('lpips_mean', 0):.4f} | {a.get('lpips_max', 0):.4f} | {a.get('non_finite', 0)} | "
            f"{_counts(conv)} | {_counts(elt)} |")
    lines += ["", f"Two FP32 samples of the same LR image with different noise agree to at most "
                  f"{results['unrelated_samples_psnr_db']:.1f} dB: what an engine that scrambled the noise would "
                  "score."]
    return "\n".join(lines) + "\n"


def _counts(by_precision: dict[str, int]) -> str:
    shown = ("f32", "bf16", "f16", "i8", "u8")
    return ", ".join(f"{kind} {count}" for kind, count in by_precision.items() if kind in shown)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import openvino as ov

    from cvdvae.hub.lpips import load_lpips
    from cvdvae.seeding import noise_numpy
    from runtime.backends.openvino_precision import runtime_precisions
    from runtime.model_files import locate, verify_onnx

    chosen = {0, *(int(i) for i in args.configs.split(","))} if args.configs else set(range(len(CONFIGS)))
    with tempfile.TemporaryDirectory(prefix="cvdvae-bf16-") as tmp:
        folder = args.engine_dir or export_for(Path(tmp), preset=args.preset)
        files = locate(folder)
        path = verify_onnx(files)
        core = ov.Core()
        lr, temperature = make_inputs(files.lr_size, 1, args.n)
        feeds = {"lr": lr, "noise": noise_numpy(SEED, args.n, files.noise_dim)[None],
                 "temperature": temperature[None]}
        tails = pixel_tails(feeds["noise"], files)
        lpips = load_lpips()
        results: dict[str, Any] = {"model": files.model_id, "n": args.n, "openvino": ov.get_version(),
                                   "date": today(), "environment": environment(args.threads), "configs": []}
        reference = None
        for index, (name, precision, groups) in enumerate(CONFIGS):
            if index not in chosen:
                continue
            start = time.perf_counter()
            compiled = compiled_with_choice(ov, core, pinned_model(ov, core, path, groups), precision, args.threads)
            load_s = time.perf_counter() - start
            try:
                out, seconds = run(compiled, feeds, args.n, args.repeats)
            except RuntimeError as err:  # an OpenVINO failure for this configuration: recorded, not fatal
                row = {"name": name, "precision": precision, "fp32_groups": list(groups),
                       "failed": str(err).strip().splitlines()[-1]}
                results["configs"].append(row)
                print(json.dumps(row), flush=True)
                continue
            reference = reference or out
            row = {"name": name, "precision": precision, "fp32_groups": list(groups), "s_per_sample": seconds,
                   "load_s": load_s, "layers": runtime_precisions(compiled),
                   "agreement": agreement(out, reference, tails, lpips) if index else None}
            results["configs"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "layers"}), flush=True)
        results["unrelated_samples_psnr_db"] = unrelated_psnr(reference["sr"][0])
        if args.int8:
            row = {"name": "int8 convolutions (NNCF, calibrated on the graph's inputs)", "precision": "int8",
                   "fp32_groups": [], **int8_attempt(ov, core, path, feeds, args.threads, args.n, args.repeats)}
            if "out" in row:
                row["agreement"] = agreement(row.pop("out"), reference, tails, lpips)
            results["configs"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "layers"}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.md:
        args.md.write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
