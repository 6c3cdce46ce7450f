"""Weight files through PyTorch, on the CPU or CUDA: the model itself behind the backend interface.

What ``Pipeline.from_pretrained`` runs for a ``.safetensors``, ``.ckpt`` or ``.th`` file, and what
``cvdvae eval`` and the benchmark compare the exported graphs with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cvdvae.noise_recipe import Noise, NoiseLevels, compose

from ..model_files import ModelShape
from ..timings import Timings
from .interface import Backend, Sampled, sampled
from .noise_cache import NoiseCache

WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".th", ".pt", ".pth")


@dataclass
class TorchBackend(Backend):
    model: Any                    # a cvdvae.CVDVAE in eval mode, on ``device``
    device: str = "cpu"
    max_batch: int = 4
    max_n: int = 8
    name: str = "torch"
    precision: str = "fp32"
    provider: str | None = None
    note: str | None = None
    timings: Timings = field(default_factory=Timings)
    _noise: NoiseCache = field(default_factory=NoiseCache)

    def __post_init__(self) -> None:
        self.provider = self.device

    @classmethod
    def from_weights(cls, path: str | Path, *, vdvae: str | Path | None = None, config: str | Path | None = None,
                     preset: str | None = None, device: str | None = None, tf32: bool = False) -> "TorchBackend":
        """Load weight file(s) strictly (``cvdvae.load_model``) onto ``device`` (default: CUDA when present)."""
        import torch

        from cvdvae.tf32 import set_tf32
        from cvdvae.weights import load_model

        start = time.perf_counter()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        set_tf32(tf32)
        backend = cls(load_model(path, vdvae, config, preset, device=device), device)
        backend.timings.load = time.perf_counter() - start
        return backend

    @property
    def shape(self) -> ModelShape:
        cfg = self.model.config
        return ModelShape(cfg.has_lr_encoder, cfg.image_size_y, cfg.image_size, cfg.scale_factor,
                          levels=NoiseLevels.from_config(cfg))

    def sample_rows(self, lr: np.ndarray | None, seeds: Sequence[Noise], first_sample: int,
                    temperature: np.ndarray) -> Sampled:
        import torch

        from cvdvae.seeding import noise_torch

        batch, n = temperature.shape
        start = time.perf_counter()
        levels = NoiseLevels.from_config(self.model.config)
        blocks = {seed: self._noise.get_or_make((seed, first_sample, n), lambda seed=seed: compose(
            seed, levels.dim, n, first_sample, lambda *args: noise_torch(*args, device=self.device), levels))
            for seed in dict.fromkeys(seeds)}
        noise = blocks[seeds[0]][None].expand(batch, -1, -1) if len(blocks) == 1 else \
            torch.stack([blocks[seed] for seed in seeds])
        middle = time.perf_counter()
        t = torch.from_numpy(np.ascontiguousarray(temperature, np.float32)).to(self.device)
        images = None if lr is None else torch.from_numpy(np.ascontiguousarray(lr, np.float32)).to(self.device)
        with torch.inference_mode():
            sr, non_finite = self.model.sample(images, noise, t)
        self.timings.noise += middle - start
        self.timings.inference += time.perf_counter() - middle
        self.timings.calls += 1
        return sampled(sr.float().cpu().numpy(), non_finite.cpu().numpy())
