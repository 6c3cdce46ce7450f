"""``cvdvae eval`` (alias ``cvdvae-eval``): LR-PSNR, APD (MSE, LPIPS), PSNR, SSIM, LPIPS on PyTorch,
ONNX Runtime, OpenVINO or TensorRT (``runtime.evaluation``)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Optional, Sequence

import numpy as np
import typer

from cvdvae.fileio import atomic_path

from ..backends import CHOICES
from .command import command_app, examples, run_app
from .common import (ConfigFile, Json, Quiet, Seed, Temperatures, Tf32, Vdvae, check_choice, check_preset,
    parse_temperatures)

app = command_app("The paper's metrics on HR images degraded to LR: LR-PSNR (consistency), APD-MSE and APD-LPIPS "
                  "(diversity), PSNR, SSIM and LPIPS against the ground truth; the PSNR of the samples' mean, and "
                  "how well their spread (std map) predicts its error; means over inputs.")


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
    backend: Annotated[str, typer.Option(help=f"{', '.join(CHOICES)}")] = "auto",
    tf32: Tf32 = False,
    preset: Annotated[Optional[str], typer.Option(help="config for a PyTorch checkpoint without one")] = None,
    config: ConfigFile = None,
    vdvae: Vdvae = None,
    lpips: Annotated[bool, typer.Option("--lpips/--no-lpips", help="the LPIPS metrics")] = True,
    lpips_weights: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help=(
        "LPIPS-alex safetensors (default: what cvdvae fetch lpips-alex put in $CVDVAE_HOME)"))] = None,
    brisque: Annotated[bool, typer.Option("--brisque/--no-brisque", help=(
        "BRISQUE of the samples, per temperature (LIVE's model: cvdvae fetch brisque)"))] = True,
    levels: Annotated[Optional[str], typer.Option("--levels", help=(
        "where the diversity lives: 'all' or a comma list of levels (px); per level L, n samples that keep sample "
        "0's latent groups below L and draw the others afresh, scored"))] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="write the results (JSON) here")] = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> int:
    from cvdvae.hub.lpips import load_lpips

    from ..evaluation.evaluate import EvalSettings, evaluate
    from ..pipeline import Pipeline, broken_model_advice

    check_choice(split, ("val", "all"), "--split")
    check_choice(backend, CHOICES, "--backend")
    check_preset(preset)
    temperatures = np.asarray(parse_temperatures(temperature, n), np.float32)
    pipe = Pipeline.from_pretrained(model, backend, tf32=tf32, vdvae=vdvae, config=config, preset=preset)
    metric = load_lpips(lpips_weights) if lpips else None
    settings = EvalSettings(data, temperatures, split, count, seed, metric, tf32,
                            load_brisque() if brisque else None, parse_levels(levels, pipe))
    results = {"model": str(model), **evaluate(pipe, settings, progress=not (quiet or json_))}
    if out:
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(results, indent=2) + "\n")
    if json_:
        print(json.dumps(results, indent=2))
    elif not quiet:
        print_table(results)
    if results["non_finite_samples"]:
        raise RuntimeError(f"{results['non_finite_samples']} samples contained NaN/Inf; their inputs were left out "
                           f"of the metrics ({broken_model_advice(pipe.backend.precision)})")
    return 0


def load_brisque() -> Any:
    """LIVE's BRISQUE model, from where ``cvdvae fetch brisque`` put it."""
    from cvdvae.errors import CVDVAEError
    from cvdvae.hub.assets import fetched_file
    from cvdvae.metrics.brisque import live_model

    path = fetched_file("brisque")
    if path is None:
        raise CVDVAEError("BRISQUE needs LIVE's model: run cvdvae fetch brisque (or leave it out: {brisque})",
                          brisque=False)
    return live_model(path)


def parse_levels(text: str | None, pipe: Any) -> tuple[int, ...]:
    """--levels: 'all' (every level of the model) or a comma list of them."""
    if text is None:
        return ()
    known = pipe.shape.levels.resolutions if pipe.shape.levels is not None else []
    if text.strip() == "all":
        return tuple(known)
    try:
        chosen = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        chosen = ()
    if not chosen or any(level not in known for level in chosen):
        raise typer.BadParameter(f"{text!r}: expected 'all' or levels of this model ({', '.join(map(str, known))} px)",
                                 param_hint="'--levels'")
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, prog="cvdvae-eval")


def print_table(results: dict) -> None:
    m, p = results["metrics"], results["protocol"]
    print(f"{p['inputs']} inputs x {p['samples_per_input']} samples, t={p['temperature']}, seed {p['seed']}, "
          f"x{p['scale']}, {results['backend']} {results['precision']}")
    for key, label, unit in (("lr_psnr", "LR-PSNR", "dB"), ("apd_mse", "APD-MSE", ""), ("apd_lpips", "APD-LPIPS", ""),
                             ("psnr", "PSNR", "dB (one sample, mean over samples)"),
                             ("mean_psnr", "PSNR-mean", "dB (the mean of the samples)"), ("ssim", "SSIM", ""),
                             ("lpips", "LPIPS", ""),
                             ("std_error_corr", "std~error", "(Pearson r, std map vs the mean's error)"),
                             ("mean_std", "mean std", "(8-bit levels)"), ("brisque", "BRISQUE", "(lower is better)")):
        value = m[key]
        text = "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f} {unit}"
        print(f"  {label:<10} {text}")
    for t, value in results.get("brisque_by_temperature", {}).items():
        print(f"  BRISQUE at t={t}: {value:.4f}")
    if results.get("levels"):
        print("  varied from    APD-MSE  APD-LPIPS  mean std  LR-PSNR  BRISQUE")
        for level, row in results["levels"].items():
            cells = [row[k] for k in ("apd_mse", "apd_lpips", "mean_std", "lr_psnr", "brisque")]
            print(f"  {level + ' px':<12} " + "  ".join("-".rjust(8) if v is None else f"{v:8.4f}" for v in cells))


if __name__ == "__main__":
    sys.exit(main())
