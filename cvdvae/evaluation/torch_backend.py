"""The PyTorch model behind the runtime's backend interface, so one evaluation serves all."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from runtime.noise_cache import NoiseCache
from runtime.timings import Timings

from ..model import CVDVAE
from ..seeding import noise_torch


@dataclass
class TorchBackend:
    model: CVDVAE
    device: torch.device = torch.device("cpu")
    max_batch: int = 4
    max_n: int = 8
    name: str = "torch"
    precision: str = "fp32"
    timings: Timings = field(default_factory=Timings)
    _noise: NoiseCache = field(default_factory=NoiseCache)

    def sample(self, lr: np.ndarray, seed: int, first_sample: int, temperature: np.ndarray) -> np.ndarray:
        batch, n = lr.shape[0], temperature.shape[0]
        start = time.perf_counter()
        noise = self._noise.get_or_make((seed, first_sample, n), lambda: noise_torch(
            seed, n, self.model.noise_layout.dim, first_sample, device=self.device))
        middle = time.perf_counter()
        t = torch.from_numpy(np.ascontiguousarray(temperature, np.float32)).to(self.device).expand(batch, n)
        with torch.inference_mode():
            sr = self.model(torch.from_numpy(np.ascontiguousarray(lr, np.float32)).to(self.device),
                            noise[None].expand(batch, -1, -1), t)
        self.timings.noise += middle - start
        self.timings.inference += time.perf_counter() - middle
        self.timings.calls += 1
        return sr.float().cpu().numpy()
