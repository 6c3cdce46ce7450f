"""A training run: its options, its folder (``run.json``, checkpoints, metrics), starting and resuming.

``RunOptions`` is what ``run.json`` records under ``"args"``; resuming reads it back, so a run
continues with its own data, model and settings (only ``steps`` may be raised to extend it).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..config import config_from_mapping, preset_values, read_config_mapping
from ..errors import CVDVAEError
from ..fileio import atomic_path
from ..hub.assets import fetch_hint, fetched_file
from ..model import CVDVAE
from ..random_weights import randomize_
from ..tf32 import set_tf32
from ..weights import load_model, load_prior_into
from .data import HRSource, PairDataset, split_indices
from .loop import Trainer, TrainSettings, TrainState, distributed
from .objective import freeze_prior

RUN_FILE = "run.json"
PATHS = ("data", "out", "resume", "config", "vdvae", "checkpoint")


@dataclass(frozen=True)
class RunOptions:
    data: Path | None = None          # a folder of HR images, or the VD-VAE ffhq-256.npy array
    out: Path | None = None           # a new run folder
    resume: Path | None = None        # continue the run in this folder
    scale: int = 4
    preset: str | None = None
    config: Path | None = None
    vdvae: Path | None = None         # the prior (default: the fetched one)
    checkpoint: Path | None = None    # start from a full CVDVAE checkpoint instead
    random_prior: bool = False        # a seeded random VD-VAE (smoke tests only)
    val_count: int | None = None      # images held out (default: 7,000 of ffhq-256.npy, else a tenth)
    device: str = "cpu"
    tf32: bool = False
    # Overrides of TrainSettings (None: the default, or the run's own when resuming).
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    min_lr: float | None = None
    patience: int | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    ema: float | None = None
    amp: bool = False
    val_every: int | None = None
    val_images: int | None = None
    val_temperature: float | None = None
    log_every: int | None = None
    workers: int | None = None
    seed: int | None = None

    def settings(self) -> TrainSettings:
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainSettings)}
        return TrainSettings(**{k: v for k, v in given.items() if v is not None})

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "RunOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: Path(v) if k in PATHS and v else v for k, v in values.items() if k in known})


def resumed(options: RunOptions) -> RunOptions:
    """The options saved in the run folder, with ``resume`` and a larger ``steps`` taken from ``options``."""
    run_dir = options.resume
    saved_path = run_dir / RUN_FILE
    if not saved_path.is_file() or not (run_dir / "state.pt").is_file():
        raise CVDVAEError(f"{run_dir} is not a resumable run (needs {RUN_FILE} and state.pt)")
    saved = RunOptions.from_json(json.loads(saved_path.read_text())["args"])
    return dataclasses.replace(saved, resume=run_dir, out=saved.out, steps=options.steps or saved.steps)


def build_model(options: RunOptions, seed: int) -> CVDVAE:
    """The full model (HR encoder and q(z|x) heads included) with the prior loaded and frozen."""
    if options.checkpoint:
        model = load_model(options.checkpoint, options.vdvae, options.config, options.preset, with_posterior=True)
    else:
        values = preset_values(options.preset or f"ffhq256-x{options.scale}")
        if options.config:
            values.update(read_config_mapping(options.config))
        cfg, _ = config_from_mapping(values)
        if not cfg.has_lr_encoder:
            raise CVDVAEError("the config has no LR encoder to train (enc_blocks_y, ky, image_size_y)")
        torch.manual_seed(seed)  # the LR encoder's official initialisation, reproducibly
        model = CVDVAE(cfg, with_posterior=True)
        if options.random_prior:
            lr_part = {n: p.detach().clone() for n, p in model.named_parameters()
                       if n.startswith("encoder_y.") or ".enc_y." in n}
            randomize_(model, seed)
            model.load_state_dict(lr_part, strict=False)
        else:
            load_prior_into(model, options.vdvae or fetched_prior())
    freeze_prior(model)
    return model


def fetched_prior() -> Path:
    path = fetched_file("vdvae-ffhq256")
    if path is None:
        raise CVDVAEError(f"no prior weights: run `{fetch_hint('vdvae-ffhq256')}` (or name a VD-VAE file, or a "
                          "CVDVAE checkpoint to continue from)")
    return path


def open_run(options: RunOptions, progress: bool = True) -> Trainer:
    """A trainer for a new run (its folder made, ``run.json`` written) or a resumed one (its state loaded)."""
    rank, _, local_rank = distributed()
    if options.resume:
        options = resumed(options)
        run_dir = options.resume
    else:
        if options.data is None or options.out is None:
            raise CVDVAEError("a new run needs its data and an output folder (or a run to resume)")
        run_dir = options.out
        if run_dir.exists() and rank == 0:
            raise CVDVAEError(f"{run_dir} exists; a new run needs a new folder (or resume that one)")
    device = torch.device(options.device if options.device != "cuda" else f"cuda:{local_rank}")
    set_tf32(options.tf32)
    settings = options.settings()
    model = build_model(options, settings.seed)
    cfg = model.config
    source = HRSource(options.data, cfg.image_size)
    train_idx, val_idx = split_indices(len(source), options.val_count)
    train_set = PairDataset(source, train_idx, cfg.scale_factor)
    val_set = PairDataset(source, val_idx, cfg.scale_factor)
    if len(train_set) < settings.batch_size:
        raise CVDVAEError(f"{len(train_set)} training images is fewer than one batch of {settings.batch_size}")
    if not options.resume and rank == 0:
        run_dir.mkdir(parents=True)
        record = {"args": options.to_json(), "settings": dataclasses.asdict(settings), "config": cfg.to_dict(),
                  "train_images": len(train_set), "val_images": len(val_set)}
        with atomic_path(run_dir / RUN_FILE) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
    trainer = Trainer(model, train_set, val_set, settings, run_dir, device, progress=progress)
    if options.resume:
        trainer.load_state()
    return trainer


def fit(trainer: Trainer) -> TrainState:
    """Train to the end; under torchrun, wait for every rank and close the process group."""
    try:
        return trainer.fit()
    finally:
        if dist.is_initialized():
            dist.barrier()  # rank 0 may still be saving
            dist.destroy_process_group()
