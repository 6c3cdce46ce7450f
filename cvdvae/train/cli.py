"""``cvdvae-train``: train the LR encoder against a frozen VD-VAE (``torchrun`` for several GPUs)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist

from ..cli import add_common_options, run_command
from ..config import PRESETS, config_from_mapping, preset_values, read_config_mapping
from ..errors import CVDVAEError
from ..fileio import atomic_path
from ..model import CVDVAE
from ..random_weights import randomize_
from ..tf32 import set_tf32
from ..weights import load_model, load_prior_into
from .data import HRSource, PairDataset, split_indices
from .loop import Trainer, TrainSettings, distributed
from .objective import freeze_prior

RUN_FILE = "run.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cvdvae-train", description=(
        "Train the CVDVAE LR encoder (encoder_y and the enc_y heads) against a frozen VD-VAE: "
        "KL(q(z|x) || q(z|y)) over the first ky latent groups."))
    p.add_argument("--data", type=Path, help="folder of HR images, or the VD-VAE ffhq-256.npy array")
    p.add_argument("--out", type=Path, help="new run folder (never an existing one)")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in this folder")
    m = p.add_argument_group("model")
    m.add_argument("--scale", type=int, choices=(4, 8, 16), default=4, help="picks the ffhq256-x{scale} preset")
    m.add_argument("--preset", choices=sorted(PRESETS))
    m.add_argument("--config", type=Path, help="YAML/JSON of official hyper-parameter names")
    m.add_argument("--vdvae", type=Path, help="the pretrained VD-VAE .th (the frozen prior and HR encoder)")
    m.add_argument("--checkpoint", type=Path, help="start from a full CVDVAE checkpoint instead")
    m.add_argument("--random-prior", action="store_true", help="a seeded random VD-VAE (smoke tests only)")
    t = p.add_argument_group("training")
    for f in dataclasses.fields(TrainSettings):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            t.add_argument(flag, action="store_true", help=f"(default {f.default})")
        else:
            kind = {"int": int, "float": float}[str(f.type)]
            # None: the saved run's value when resuming, else the default.
            t.add_argument(flag, type=kind, default=None, help=f"(default {f.default})")
    t.add_argument("--val-count", type=int, help="images held out (default: 7,000 of ffhq-256.npy, else a tenth)")
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--tf32", action="store_true", help="allow TF32 in CUDA matmuls and convolutions (off: FP32)")
    add_common_options(p)
    return p


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
        elif args.vdvae:
            load_prior_into(model, args.vdvae)
        else:
            raise CVDVAEError("no prior weights: pass --vdvae ffhq256-iter-1700000-model-ema.th "
                              "(or --checkpoint to continue from a CVDVAE checkpoint)")
    freeze_prior(model)
    return model


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
        print(f"cvdvae-train: interrupted at step {trainer.state.step}; saved. Continue with: "
              f"cvdvae-train --resume {run_dir}", file=sys.stderr)
        return 130
    finally:
        if dist.is_initialized():
            dist.barrier()  # rank 0 may still be saving
            dist.destroy_process_group()
    if rank == 0 and not args.quiet:
        print(f"trained {state.step} steps ({state.skipped_steps} skipped), best validation KL "
              f"{state.best_val_kl:.4f}; checkpoints in {run_dir}/ (export with cvdvae-export --checkpoint "
              f"{run_dir}/best.safetensors)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.add_argument("--quiet", action="store_true")
    return run_command(train, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
