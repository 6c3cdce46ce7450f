"""``cvdvae train`` (alias ``cvdvae-train``): train the LR encoder against a frozen VD-VAE
(``cvdvae.train``; ``torchrun`` for several GPUs)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional, Sequence

import typer

from .command import command_app, examples, run_app
from .common import MAX_SEED, ConfigFile, Quiet, Scale, Tf32, Vdvae, check_choice, check_preset


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


app = command_app("Train the CVDVAE LR encoder (encoder_y and the enc_y heads) against a frozen VD-VAE: "
                  "KL(q(z|x) || q(z|y)) over the first ky latent groups (torchrun for several GPUs).")
Training = "Training (default: the run's own values when resuming)"


def _setting(help: str, **limits) -> Any:
    return typer.Option(help=help, rich_help_panel=Training, **limits)


@app.command("train", epilog=examples(
    "cvdvae fetch vdvae-ffhq256 && cvdvae train --scale 4 --data ~/.cache/cvdvae/ffhq-256.npy --out runs/x4 --amp",
    "cvdvae train --resume runs/x4                       # after Ctrl-C or a crash",
    "torchrun --nproc_per_node=4 -m runtime.cli.train --scale 8 --data ffhq-256.npy --out runs/x8"))
def train_command(
    data: Annotated[Optional[Path], typer.Option(exists=True, help="folder of HR images, or the VD-VAE "
                                                                   "ffhq-256.npy array")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="new run folder (never an existing one)")] = None,
    resume: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False, metavar="RUN",
                                                   help="continue the run in this folder")] = None,
    scale: Scale = 4,
    preset: Annotated[Optional[str], typer.Option(help="base config instead of ffhq256-x{scale}")] = None,
    config: ConfigFile = None,
    vdvae: Vdvae = None,
    checkpoint: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help=(
        "start from a full CVDVAE checkpoint instead"))] = None,
    random_prior: Annotated[bool, typer.Option("--random-prior", help="a seeded random VD-VAE (smoke tests "
                                                                      "only)")] = False,
    steps: Annotated[Optional[int], _setting("optimizer steps (100,000)", min=1)] = None,
    batch_size: Annotated[Optional[int], _setting("images per step (4)", min=1)] = None,
    lr: Annotated[Optional[float], _setting("AdamW learning rate (1e-4)", min=0.0)] = None,
    min_lr: Annotated[Optional[float], _setting("reduce-on-plateau floor (1e-6)", min=0.0)] = None,
    patience: Annotated[Optional[int], _setting("validations without 1% gain before x0.1 (5)", min=0)] = None,
    weight_decay: Annotated[Optional[float], _setting("AdamW weight decay (0.01)", min=0.0)] = None,
    grad_clip: Annotated[Optional[float], _setting("gradient-norm clip (200)", min=0.0)] = None,
    ema: Annotated[Optional[float], _setting("EMA decay, 0 = off (0)", min=0.0, max=0.999999)] = None,
    amp: Annotated[bool, _setting("bfloat16 autocast (CUDA)")] = False,
    val_every: Annotated[Optional[int], _setting("steps between validations (1000)", min=1)] = None,
    val_images: Annotated[Optional[int], _setting("images per validation (64)", min=1)] = None,
    val_temperature: Annotated[Optional[float], _setting("temperature of the validation samples (0.8)",
                                                         min=0.0)] = None,
    log_every: Annotated[Optional[int], _setting("steps between metrics.jsonl lines (10)", min=1)] = None,
    workers: Annotated[Optional[int], _setting("data loader processes (2)", min=0)] = None,
    seed: Annotated[Optional[int], _setting("seed of the run (0)", min=0, max=MAX_SEED)] = None,
    val_count: Annotated[Optional[int], typer.Option(min=1, help=(
        "images held out (default: 7,000 of ffhq-256.npy, else a tenth)"))] = None,
    device: Annotated[Optional[str], typer.Option(help="cuda, cuda:N or cpu (default: cuda when there is "
                                                       "one)")] = None,
    tf32: Tf32 = False,
    quiet: Quiet = False,
) -> int:
    from cvdvae.train.runs import RunOptions, fit, open_run

    check_choice(scale, (4, 8, 16), "--scale")
    check_preset(preset)
    for flag, value in (("--lr", lr), ("--grad-clip", grad_clip)):
        if value is not None and value <= 0:
            raise typer.BadParameter(f"{value} must be > 0", param_hint=f"'{flag}'")
    if resume is None and (data is None or out is None):
        raise typer.BadParameter("give --data and --out (or --resume RUN)", param_hint="'--data'")
    options = RunOptions(data, out, resume, scale, preset, config, vdvae, checkpoint, random_prior, val_count,
                         device or default_device(), tf32, steps, batch_size, lr, min_lr, patience, weight_decay,
                         grad_clip, ema, amp, val_every, val_images, val_temperature, log_every, workers, seed)
    trainer = open_run(options, progress=not quiet)
    try:
        state = fit(trainer)
    except KeyboardInterrupt:
        print(f"cvdvae train: stopped at step {trainer.state.step} and saved; continue with: "
              f"cvdvae train --resume {trainer.run_dir}", file=sys.stderr)
        return 130
    if trainer.rank == 0 and not quiet:
        print(f"trained {state.step} steps ({state.skipped_steps} skipped), best validation KL "
              f"{state.best_val_kl:.4f}; checkpoints in {trainer.run_dir}/ (export with cvdvae export --checkpoint "
              f"{trainer.run_dir}/best.safetensors)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, prog="cvdvae-train")


if __name__ == "__main__":
    sys.exit(main())
