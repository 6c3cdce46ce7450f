"""``cvdvae eval`` (alias ``cvdvae-eval``): LR-PSNR, APD (MSE, LPIPS), PSNR, SSIM, LPIPS on PyTorch,
ONNX Runtime or TensorRT."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Annotated, Optional, Sequence

import numpy as np
import torch
import typer

from runtime.backends import CHOICES

from ..cli import (ConfigFile, Debug, Json, Quiet, Seed, Temperatures, Tf32, Vdvae, check_choice, check_preset,
                   command_app, examples, parse_temperatures, run_app)
from ..errors import CVDVAEError
from ..fileio import atomic_path
from ..progress import ProgressBar
from ..tf32 import set_tf32
from ..train.data import HRSource, PairDataset, split_indices
from .scores import Scores, score

WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".th", ".pt", ".pth")
BRISQUE_NOTE = "not computed: no BRISQUE model can be obtained and checked offline here (see README)"


app = command_app("The paper's metrics on HR images degraded to LR: LR-PSNR (consistency), APD-MSE and APD-LPIPS "
                  "(diversity), PSNR, SSIM and LPIPS against the ground truth; means over inputs.")


@app.command("eval", epilog=examples(
    "cvdvae eval engines/x4-fp16 --data ~/.cache/cvdvae/ffhq-256.npy --count 7000 --n 5 --out eval-x4.json",
    "cvdvae eval runs/x4/best.safetensors --data faces/ --split all --count 50 --no-lpips --json"))
def eval_command(
    model: Annotated[Path, typer.Argument(exists=True, metavar="MODEL", show_default=False, help=(
        "weights (.safetensors/.ckpt: PyTorch) or an export folder / model.onnx / engine.plan"))],
    data: Annotated[Path, typer.Option(exists=True, show_default=False, help=(
        "folder of HR images or the VD-VAE ffhq-256.npy"))],
    split: Annotated[str, typer.Option(help="val: the official held-out images (seed-5 permutation); all: every "
                                            "image in order")] = "val",
    count: Annotated[int, typer.Option(min=1, help="inputs to evaluate")] = 100,
    n: Annotated[int, typer.Option("--n", min=1, help="samples per input (the paper's APD uses 5)")] = 5,
    temperature: Temperatures = None,
    seed: Seed = 0,
    backend: Annotated[str, typer.Option(help=f"torch, {', '.join(CHOICES)}")] = "auto",
    tf32: Tf32 = False,
    preset: Annotated[Optional[str], typer.Option(help="config for a PyTorch checkpoint without one")] = None,
    config: ConfigFile = None,
    vdvae: Vdvae = None,
    lpips: Annotated[bool, typer.Option("--lpips/--no-lpips", help="the LPIPS metrics")] = True,
    lpips_weights: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help=(
        "LPIPS-alex safetensors (default: what cvdvae fetch lpips-alex put in $CVDVAE_HOME)"))] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="write the results (JSON) here")] = None,
    json_: Json = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> int:
    check_choice(split, ("val", "all"), "--split")
    check_choice(backend, ("torch", *CHOICES), "--backend")
    check_preset(preset)
    temperatures = parse_temperatures(temperature, n)
    args = argparse.Namespace(**locals())
    args.json, args.temperature = json_, temperatures
    return evaluate(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, prog="cvdvae-eval")


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
    if not files.conditional:
        raise CVDVAEError(f"{path} is a prior-only model: the metrics need a super-resolution model")
    backend, _ = open_backend(files, args.backend, tf32=args.tf32)
    return backend, files.hr_size, files.scale


def evaluate(args: argparse.Namespace) -> int:
    backend, hr_size, scale = open_model(args)
    lpips = None
    if args.lpips:
        from ..metrics import load_lpips

        lpips = load_lpips(args.lpips_weights)
    source = HRSource(args.data, hr_size)
    indices = split_indices(len(source))[1] if args.split == "val" else np.arange(len(source))
    indices = indices[: args.count]
    images = PairDataset(source, indices, scale)
    temperatures = np.asarray(args.temperature, np.float32)
    per_input: list[Scores] = []
    non_finite = 0
    start = time.perf_counter()
    batches = range(0, len(images), backend.max_batch)
    with ProgressBar(len(batches), "batches", disable=args.quiet or args.json) as progress:
        for first in batches:
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
            progress.update()
    results = summarise(per_input, args, backend, hr_size, scale, time.perf_counter() - start)
    results["non_finite_samples"] = non_finite
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        print(json.dumps(results, indent=2))
    elif not args.quiet:
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
        "protocol": {"inputs": len(per_input), "samples_per_input": args.n,
                     "temperature": args.temperature[0] if len(set(args.temperature)) == 1 else args.temperature,
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


if __name__ == "__main__":
    sys.exit(main())
