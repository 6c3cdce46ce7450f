"""The training loop: AdamW on the LR encoder, reduce-on-plateau, EMA, clipping, checkpoints.

A run folder holds ``run.json`` (the settings and config), ``last.safetensors`` and
``best.safetensors`` (every tensor of the model, loadable by ``cvdvae-export
--checkpoint``; EMA weights when EMA is on), ``state.pt`` (optimizer, scheduler, EMA,
step: what ``--resume`` needs) and ``metrics.jsonl``. Data-parallel over ``torchrun``
processes when ``WORLD_SIZE`` > 1; rank 0 validates, logs and saves.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from ..config import CVDVAEConfig
from ..degradation import bicubic_degradation
from ..fileio import atomic_path
from ..model import CVDVAE
from ..seeding import noise_torch
from ..weights import save_safetensors
from .data import PairDataset
from .objective import PosteriorKL, trainable_parameters


@dataclass
class TrainSettings:
    steps: int = 100_000
    batch_size: int = 4
    lr: float = 1e-4
    min_lr: float = 1e-6
    patience: int = 5
    weight_decay: float = 0.01
    grad_clip: float = 200.0
    ema: float = 0.0            # 0 turns EMA off; e.g. 0.9999
    amp: bool = False           # bfloat16 autocast, CUDA only
    val_every: int = 1000
    val_images: int = 64
    val_temperature: float = 0.8
    log_every: int = 10
    workers: int = 2
    seed: int = 0


@dataclass
class TrainState:
    step: int = 0
    best_val_kl: float = math.inf
    skipped_steps: int = 0
    samples_seen: int = 0


class EMA:
    """Exponential moving average of the trainable parameters."""

    def __init__(self, params: list[tuple[str, torch.nn.Parameter]], decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in params}

    @torch.no_grad()
    def update(self, params: list[tuple[str, torch.nn.Parameter]]) -> None:
        for name, p in params:
            self.shadow[name].lerp_(p.detach(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)


def distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) under torchrun, else (0, 1, 0)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


class Trainer:
    def __init__(self, model: CVDVAE, train: PairDataset, val: PairDataset, settings: TrainSettings, run_dir: Path,
                 device: torch.device, progress: bool = True):
        self.model, self.settings, self.run_dir, self.device = model.to(device), settings, run_dir, device
        self.rank, self.world, _ = distributed()
        self.objective = PosteriorKL(self.model)
        self.params = trainable_parameters(self.model)
        self.model.eval()  # no layer behaves differently in training; the prior stays frozen
        self.optimizer = torch.optim.AdamW([p for _, p in self.params], lr=settings.lr,
                                           weight_decay=settings.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=0.1, patience=settings.patience, threshold=0.01,
            threshold_mode="rel", min_lr=settings.min_lr)
        self.ema = EMA(self.params, settings.ema) if settings.ema else None
        self.state = TrainState()
        # z ~ q(z|x) draws come from their own generator, saved with the run, so that a resumed
        # run continues exactly; validation uses a fixed one.
        self.noise = torch.Generator(device).manual_seed(settings.seed + 1000 * self.rank)
        self.train_set, self.val_set = train, val
        self.progress = progress and self.rank == 0
        self.runner = self.objective
        if self.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.runner = torch.nn.parallel.DistributedDataParallel(self.objective, device_ids=ids)

    # ----------------------------------------------------------------- batches
    def steps_per_epoch(self) -> int:
        return len(self.train_set) // self.world // self.settings.batch_size

    def epoch_order(self, epoch: int) -> list[tuple[int, bool]]:
        """This rank's (example, flip) order for one pass: a function of (seed, epoch) only."""
        gen = torch.Generator().manual_seed(self.settings.seed + epoch)
        flips = (torch.rand(len(self.train_set), generator=gen) < 0.5).tolist()
        if self.world > 1:
            sampler = DistributedSampler(self.train_set, self.world, self.rank, seed=self.settings.seed)
            sampler.set_epoch(epoch)
            order = list(sampler)
        else:
            order = torch.randperm(len(self.train_set), generator=gen).tolist()
        return [(i, flips[i]) for i in order]

    def batches(self, start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless batches from step ``start_step`` on: a resumed run sees what it would have seen."""
        per_epoch = self.steps_per_epoch()
        epoch, skip = divmod(start_step, per_epoch)
        bs = self.settings.batch_size
        while True:
            order = self.epoch_order(epoch)[skip * bs: per_epoch * bs]
            loader = DataLoader(self.train_set, batch_size=bs, sampler=order, num_workers=self.settings.workers,
                                drop_last=True, pin_memory=self.device.type == "cuda",
                                generator=torch.Generator().manual_seed(self.settings.seed))
            for hr, lr in loader:
                yield hr.to(self.device, non_blocking=True), lr.to(self.device, non_blocking=True)
            epoch, skip = epoch + 1, 0

    # -------------------------------------------------------------------- step
    def train_step(self, hr: torch.Tensor, lr: torch.Tensor) -> dict[str, Any]:
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.settings.amp else nullcontext()
        with autocast:
            per_group = self.runner(hr, lr, generator=self.noise)
        loss = PosteriorKL.loss(per_group)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_([p for _, p in self.params], self.settings.grad_clip)
        finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
            if self.ema:
                self.ema.update(self.params)
        else:
            self.state.skipped_steps += 1
        return {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "skipped": not finite,
                "kl_per_res": self.kl_per_resolution(per_group.detach().mean(dim=1))}

    def kl_per_resolution(self, per_group: torch.Tensor) -> dict[str, float]:
        out: dict[str, float] = {}
        for block, value in zip(self.model.decoder.dec_blocks, per_group.tolist()):
            out[str(block.res)] = out.get(str(block.res), 0.0) + value
        return out

    # -------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation KL (no flips) and the LR-PSNR of one sample per image."""
        with self.ema_weights():
            return self._validate()

    def _validate(self) -> dict[str, float]:
        cfg: CVDVAEConfig = self.model.config
        count = min(self.settings.val_images, len(self.val_set))
        loader = DataLoader(torch.utils.data.Subset(self.val_set, range(count)), batch_size=self.settings.batch_size)
        gen = torch.Generator(device=self.device).manual_seed(12345)
        degrade = bicubic_degradation(cfg.image_size, cfg.scale_factor)
        kl_sum, psnr_sum, seen = 0.0, 0.0, 0
        noise = noise_torch(0, 1, self.model.noise_layout.dim, device=self.device)  # every image: sample 0 of seed 0
        for hr, lr in loader:
            hr, lr = hr.to(self.device), lr.to(self.device)
            kl_sum += float(PosteriorKL.loss(self.objective(hr, lr, generator=gen))) * len(hr)
            temperature = torch.full((len(lr), 1), self.settings.val_temperature, device=self.device)
            sr = self.model(lr, noise[None].expand(len(lr), -1, -1), temperature)[:, 0]
            lr_of_sr = degrade.downscale(torch.round(sr.clamp(0, 1) * 255))
            mse = ((lr_of_sr - lr) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
            psnr_sum += float((10 * torch.log10(255.0**2 / mse)).sum())
            seen += len(hr)
        return {"val_kl": kl_sum / seen, "val_lr_psnr": psnr_sum / seen, "val_images": seen}

    @contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Swap the EMA weights in for validation and saving (a no-op without EMA)."""
        if not self.ema:
            yield
            return
        saved = {n: p.detach().clone() for n, p in self.params}
        with torch.no_grad():
            for n, p in self.params:
                p.copy_(self.ema.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params:
                    p.copy_(saved[n])

    # ----------------------------------------------------------- checkpoints
    def save(self, name: str) -> None:
        with self.ema_weights():
            save_safetensors(self.run_dir / f"{name}.safetensors", self.model.state_dict(), self.model.config)

    def save_state(self) -> None:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "trainable": {n: p.detach().cpu() for n, p in self.params},
                 "ema": self.ema.state_dict() if self.ema else {}, "state": json.dumps(asdict(self.state)),
                 "noise_rng": self.noise.get_state()}
        with atomic_path(self.run_dir / "state.pt") as tmp:
            torch.save(state, tmp)

    def load_state(self) -> None:
        state = torch.load(self.run_dir / "state.pt", map_location=self.device, weights_only=True)
        with torch.no_grad():
            for n, p in self.params:
                p.copy_(state["trainable"][n])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema and state["ema"]:
            self.ema.shadow = {k: v.to(self.device) for k, v in state["ema"].items()}
        self.state = TrainState(**json.loads(state["state"]))
        self.noise.set_state(state["noise_rng"].cpu())

    def log(self, entry: dict) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")

    # -------------------------------------------------------------------- run
    def fit(self) -> TrainState:
        s, st = self.settings, self.state
        bar = self._progress_bar()
        start, last_log = time.perf_counter(), (time.perf_counter(), st.samples_seen)
        batches = self.batches(st.step)
        if st.step == 0:
            self.validation_round(step_scheduler=False)  # the starting point, for the log
        try:
            while st.step < s.steps:
                hr, lr = next(batches)
                stats = self.train_step(hr, lr)
                st.step += 1
                st.samples_seen += len(hr) * self.world
                if self.rank == 0 and (st.step % s.log_every == 0 or st.step == s.steps):
                    now = time.perf_counter()
                    rate = (st.samples_seen - last_log[1]) / max(now - last_log[0], 1e-9)
                    last_log = (now, st.samples_seen)
                    self.log({"step": st.step, **stats, "lr": self.optimizer.param_groups[0]["lr"],
                              "samples_per_s": rate, "skipped_total": st.skipped_steps})
                    bar.note(f"loss {stats['loss']:.4f} " + " ".join(
                        f"{r}:{v:.3f}" for r, v in stats["kl_per_res"].items()) + f" {rate:.1f} samples/s")
                bar.update(1)
                if st.step % s.val_every == 0 or st.step == s.steps:
                    self.validation_round()
        except KeyboardInterrupt:
            if self.rank == 0:
                self.save("last")
                self.save_state()
            bar.close()
            raise
        bar.close()
        if self.rank == 0:
            self.save("last")
            self.save_state()
            self.log({"step": st.step, "done": True, "wall_s": time.perf_counter() - start})
        return st

    def validation_round(self, step_scheduler: bool = True) -> None:
        metric = torch.zeros(1, device=self.device)
        if self.rank == 0:
            result = self.validate()
            metric[0] = result["val_kl"]
            self.log({"step": self.state.step, **result})
            if result["val_kl"] < self.state.best_val_kl:
                self.state.best_val_kl = result["val_kl"]
                self.save("best")
            self.save("last")
            self.save_state()
        if self.world > 1:
            dist.broadcast(metric, src=0)  # every rank steps its scheduler identically
        if step_scheduler:
            self.scheduler.step(float(metric[0]))

    def _progress_bar(self):
        from ..progress import ProgressBar

        return ProgressBar(self.settings.steps, "steps", initial=self.state.step, disable=not self.progress)
