"""``cvdvae-eval``: LR-PSNR, APD (MSE, LPIPS), PSNR, SSIM, LPIPS on PyTorch, ONNX Runtime or TensorRT."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from runtime.backends import CHOICES

from ..cli import add_common_options, run_command
from ..config import PRESETS
from ..errors import CVDVAEError
from ..fileio import atomic_path
from ..tf32 import set_tf32
from ..train.data import HRSource, PairDataset, split_indices
from .scores import Scores, score

WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".th", ".pt", ".pth")
BRISQUE_NOTE = "not computed: no BRISQUE model can be obtained and checked offline here (see README)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cvdvae-eval", description=(
        "The paper's metrics on HR images degraded to LR: LR-PSNR (consistency), APD-MSE and APD-LPIPS "
        "(diversity), PSNR, SSIM and LPIPS against the ground truth; means over inputs."))
    p.add_argument("model", metavar="MODEL",
                   help="weights (.safetensors/.ckpt: PyTorch) or an export folder / model.onnx / engine.plan")
    p.add_argument("--data", type=Path, required=True, help="folder of HR images or the VD-VAE ffhq-256.npy")
    p.add_argument("--split", choices=("val", "all"), default="val",
                   help="val: the official held-out images (seed-5 permutation); all: every image in order")
    p.add_argument("--count", type=int, default=100, help="inputs to evaluate (default 100)")
    p.add_argument("--n", type=int, default=5, help="samples per input (the paper's APD uses 5)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=("torch", *CHOICES), default="auto")
    p.add_argument("--tf32", action="store_true",
                   help="allow TF32 on CUDA (PyTorch, ONNX Runtime); off by default: FP32 means FP32")
    p.add_argument("--preset", choices=sorted(PRESETS), help="config for a PyTorch checkpoint without one")
    p.add_argument("--config", type=Path)
    p.add_argument("--vdvae", type=Path)
    p.add_argument("--no-lpips", dest="lpips", action="store_false", help="skip the LPIPS metrics")
    p.add_argument("--lpips-weights", type=Path, help="LPIPS-alex safetensors (default in $CVDVAE_HOME)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--quiet", action="store_true")
    add_common_options(p)
    return p


def open_model(args: argparse.Namespace):
    """A backend over weights (PyTorch) or over an exported graph (the runtime's backends)."""
    path = Path(args.model)
    if path.is_file() and path.suffix in WEIGHT_SUFFIXES:
        if args.backend not in ("auto", "torch"):
            raise CVDVAEError(f"{path} holds weights: only --backend torch runs them (export for the others)")
        from ..weights import load_model
        from .torch_backend import TorchBackend

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        set_tf32(args.tf32)
        model = load_model(path, args.vdvae, args.config, args.preset, device=device)
        cfg = model.config
        return TorchBackend(model, device), cfg.image_size, cfg.scale_factor
    if args.backend == "torch":
        raise CVDVAEError(f"--backend torch needs weights (.safetensors/.ckpt), not {path}")
    from runtime.backends import open_backend
    from runtime.model_files import locate

    files = locate(path)
    backend, _ = open_backend(files, args.backend, tf32=args.tf32)
    return backend, files.hr_size, files.scale


def evaluate(args: argparse.Namespace) -> int:
    if args.n < 1 or args.count < 1:
        raise CVDVAEError("--n and --count must be at least 1")
    backend, hr_size, scale = open_model(args)
    lpips = None
    if args.lpips:
        from ..metrics import load_lpips

        lpips = load_lpips(args.lpips_weights)
    source = HRSource(args.data, hr_size)
    indices = split_indices(len(source))[1] if args.split == "val" else np.arange(len(source))
    indices = indices[: args.count]
    images = PairDataset(source, indices, scale)
    temperatures = np.full(args.n, args.temperature, np.float32)
    per_input: list[Scores] = []
    non_finite = 0
    start = time.perf_counter()
    from tqdm import tqdm

    for first in tqdm(range(0, len(images), backend.max_batch), disable=args.quiet, unit="batch"):
        pairs = [images[i] for i in range(first, min(first + backend.max_batch, len(images)))]
        hr = torch.stack([h for h, _ in pairs])
        lr = torch.stack([low for _, low in pairs])
        samples = np.concatenate([backend.sample(lr.numpy(), args.seed, k, temperatures[k:k + backend.max_n])
                                  for k in range(0, args.n, backend.max_n)], axis=1)
        # An input with any NaN/Inf sample is counted, not scored: cvdvae-run would not write it.
        finite = np.isfinite(samples.reshape(len(pairs), args.n, -1)).all(axis=2)
        non_finite += int((~finite).sum())
        quantised = torch.from_numpy(np.round(np.clip(samples, 0, 1) * 255) / 255)  # scored as saved: 8-bit
        with torch.no_grad():
            per_input += [score(quantised[i], lr[i], hr[i], scale, lpips)
                          for i in range(len(pairs)) if finite[i].all()]
    results = summarise(per_input, args, backend, hr_size, scale, time.perf_counter() - start)
    results["non_finite_samples"] = non_finite
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(results, indent=2) + "\n")
    if not args.quiet:
        print_table(results)
    if non_finite:
        raise RuntimeError(f"{non_finite} samples contained NaN/Inf; their inputs were left out of the metrics "
                           "(the engine is numerically broken: re-export in fp32 or --bf16)")
    return 0


def summarise(per_input: list[Scores], args, backend, hr_size: int, scale: int, wall: float) -> dict:
    means = {}
    for f in dataclasses.fields(Scores):
        values = [getattr(s, f.name) for s in per_input if getattr(s, f.name) is not None]
        means[f.name] = float(np.mean(values)) if values else None
    return {
        "metrics": means,
        "brisque": BRISQUE_NOTE,
        "protocol": {"inputs": len(per_input), "samples_per_input": args.n, "temperature": args.temperature,
                     "seed": args.seed, "split": args.split, "data": str(args.data), "hr_size": hr_size,
                     "scale": scale, "degradation": "MATLAB bicubic (antialiased), uint8 after each pass",
                     "samples_scored_as": "8-bit (round half to even), RGB, no border crop",
                     "tf32": args.tf32,
                     "lpips": "LPIPS v0.1 AlexNet" if args.lpips else None},
        "model": str(args.model), "backend": backend.name, "precision": backend.precision,
        "wall_s": round(wall, 2),
    }


def print_table(results: dict) -> None:
    m, p = results["metrics"], results["protocol"]
    print(f"{p['inputs']} inputs x {p['samples_per_input']} samples, t={p['temperature']}, seed {p['seed']}, "
          f"x{p['scale']}, {results['backend']} {results['precision']}")
    for key, label, unit in (("lr_psnr", "LR-PSNR", "dB"), ("apd_mse", "APD-MSE", ""), ("apd_lpips", "APD-LPIPS", ""),
                             ("psnr", "PSNR", "dB"), ("ssim", "SSIM", ""), ("lpips", "LPIPS", "")):
        value = m[key]
        text = "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f} {unit}"
        print(f"  {label:<10} {text}")
    print(f"  BRISQUE    {results['brisque']}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(evaluate, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
