"""``cvdvae train`` (alias ``cvdvae-train``): train the LR encoder against a frozen VD-VAE
(``torchrun`` for several GPUs)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional, Sequence

import torch
import torch.distributed as dist
import typer

from ..cli import (MAX_SEED, ConfigFile, Debug, Quiet, Scale, Tf32, Vdvae, check_choice, check_preset, command_app,
                   examples, run_app)
from ..config import config_from_mapping, preset_values, read_config_mapping
from ..errors import CVDVAEError
from ..fetch import fetch_hint, fetched_file
from ..fileio import atomic_path
from ..model import CVDVAE
from ..random_weights import randomize_
from ..tf32 import set_tf32
from ..weights import load_model, load_prior_into
from .data import HRSource, PairDataset, split_indices
from .loop import Trainer, TrainSettings, distributed
from .objective import freeze_prior

RUN_FILE = "run.json"


app = command_app("Train the CVDVAE LR encoder (encoder_y and the enc_y heads) against a frozen VD-VAE: "
                  "KL(q(z|x) || q(z|y)) over the first ky latent groups (torchrun for several GPUs).")
Training = "Training (default: the run's own values when resuming)"


def _setting(help: str, **limits) -> Any:
    return typer.Option(help=help, rich_help_panel=Training, **limits)


@app.command("train", epilog=examples(
    "cvdvae fetch vdvae-ffhq256 && cvdvae train --scale 4 --data ~/.cache/cvdvae/ffhq-256.npy --out runs/x4 --amp",
    "cvdvae train --resume runs/x4                       # after Ctrl-C or a crash",
    "torchrun --nproc_per_node=4 -m cvdvae.train.cli --scale 8 --data ffhq-256.npy --out runs/x8"))
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
    device: Annotated[str, typer.Option(help="cuda, cuda:N or cpu")] = "cuda" if torch.cuda.is_available() else "cpu",
    tf32: Tf32 = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> int:
    check_choice(scale, (4, 8, 16), "--scale")
    check_preset(preset)
    for flag, value in (("--lr", lr), ("--grad-clip", grad_clip)):
        if value is not None and value <= 0:
            raise typer.BadParameter(f"{value} must be > 0", param_hint=f"'{flag}'")
    return train(argparse.Namespace(**locals()))


def settings_from(args: argparse.Namespace) -> TrainSettings:
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings)}
    return TrainSettings(**{k: v for k, v in given.items() if v is not None})


def build_model(args: argparse.Namespace, seed: int) -> CVDVAE:
    """The full model (HR encoder and q(z|x) heads included) with the prior loaded and frozen."""
    if args.checkpoint:
        model = load_model(args.checkpoint, args.vdvae, args.config, args.preset, with_posterior=True)
    else:
        values = preset_values(args.preset or f"ffhq256-x{args.scale}")
        if args.config:
            values.update(read_config_mapping(args.config))
        cfg, _ = config_from_mapping(values)
        if not cfg.has_lr_encoder:
            raise CVDVAEError("the config has no LR encoder to train (enc_blocks_y, ky, image_size_y)")
        torch.manual_seed(seed)  # the LR encoder's official initialisation, reproducibly
        model = CVDVAE(cfg, with_posterior=True)
        if args.random_prior:
            lr_part = {n: p.detach().clone() for n, p in model.named_parameters()
                       if n.startswith("encoder_y.") or ".enc_y." in n}
            randomize_(model, seed)
            model.load_state_dict(lr_part, strict=False)
        else:
            load_prior_into(model, args.vdvae or fetched_prior())
    freeze_prior(model)
    return model


def fetched_prior() -> Path:
    path = fetched_file("vdvae-ffhq256")
    if path is None:
        raise CVDVAEError(f"no prior weights: run `{fetch_hint('vdvae-ffhq256')}` (or pass --vdvae FILE, or "
                          "--checkpoint to continue from a CVDVAE checkpoint)")
    return path


def train(args: argparse.Namespace) -> int:
    rank, _, local_rank = distributed()
    if args.resume:
        run_dir = args.resume
        saved = json.loads((run_dir / RUN_FILE).read_text()) if (run_dir / RUN_FILE).is_file() else None
        if saved is None or not (run_dir / "state.pt").is_file():
            raise CVDVAEError(f"{run_dir} is not a resumable run (needs {RUN_FILE} and state.pt)")
        given = vars(args).copy()
        for key, value in saved["args"].items():
            if key in ("resume", "out", "debug", "quiet") or (key == "steps" and given["steps"] is not None):
                continue  # --steps may extend a run; everything else is the run's own
            setattr(args, key, Path(value) if key in ("data", "vdvae", "checkpoint", "config") and value else value)
    else:
        if args.data is None or args.out is None:
            raise CVDVAEError("give --data and --out (or --resume RUN)")
        run_dir = args.out
        if run_dir.exists() and rank == 0:
            raise CVDVAEError(f"{run_dir} exists; a new run needs a new folder (or use --resume {run_dir})")
    device = torch.device(args.device if args.device != "cuda" else f"cuda:{local_rank}")
    set_tf32(args.tf32)
    settings = settings_from(args)
    model = build_model(args, settings.seed)
    cfg = model.config
    source = HRSource(args.data, cfg.image_size)
    train_idx, val_idx = split_indices(len(source), args.val_count)
    train_set = PairDataset(source, train_idx, cfg.scale_factor)
    val_set = PairDataset(source, val_idx, cfg.scale_factor)
    if len(train_set) < settings.batch_size:
        raise CVDVAEError(f"{len(train_set)} training images is fewer than one batch of {settings.batch_size}")
    if not args.resume and rank == 0:
        run_dir.mkdir(parents=True)
        record = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "settings": dataclasses.asdict(settings), "config": cfg.to_dict(),
                  "train_images": len(train_set), "val_images": len(val_set)}
        with atomic_path(run_dir / RUN_FILE) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
    trainer = Trainer(model, train_set, val_set, settings, run_dir, device, progress=not args.quiet)
    if args.resume:
        trainer.load_state()
    try:
        state = trainer.fit()
    except KeyboardInterrupt:
        print(f"cvdvae train: stopped at step {trainer.state.step} and saved; continue with: "
              f"cvdvae train --resume {run_dir}", file=sys.stderr)
        return 130
    finally:
        if dist.is_initialized():
            dist.barrier()  # rank 0 may still be saving
            dist.destroy_process_group()
    if rank == 0 and not args.quiet:
        print(f"trained {state.step} steps ({state.skipped_steps} skipped), best validation KL "
              f"{state.best_val_kl:.4f}; checkpoints in {run_dir}/ (export with cvdvae export --checkpoint "
              f"{run_dir}/best.safetensors)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, prog="cvdvae-train")


if __name__ == "__main__":
    sys.exit(main())
