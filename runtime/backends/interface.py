"""``Backend``: what every engine fills in, and all that its callers may use."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from .timings import Timings


class Backend(Protocol):
    """What every engine fills in; engines subclass it to inherit ``sample``."""

    name: str                      # tensorrt, openvino, onnxruntime or torch
    precision: str                 # what the graph computes in: fp32, fp16, bf16
    max_batch: int                 # images per call
    max_n: int                     # samples per image per call
    timings: Timings
    provider: str | None = None    # the device or execution provider that runs it
    note: str | None = None        # why ``auto`` fell back from a faster engine, when it did
    cuda_graphs: str | None = None  # TensorRT: "on", or "off" and why
    rows_independent: bool = False  # row b of a call is bit-identical to row b run alone

    def sample_rows(self, lr: np.ndarray | None, seeds: Sequence[int], first_sample: int,
                    temperature: np.ndarray) -> np.ndarray:
        """Row b is image ``lr[b]`` ([B, 3, h, w], 0..255; None for a prior-only model) with the noise
        of ``seeds[b]`` for samples ``first_sample ..`` and ``temperature[b]`` ([B, n]) -> float32
        [B, n, 3, H, W] in [0, 1] (NaN or Inf only when the engine is broken)."""
        ...

    def sample(self, lr: np.ndarray | None, seed: int, first_sample: int, temperature: np.ndarray) -> np.ndarray:
        """Every row with one seed and the temperatures ``temperature`` [n]."""
        batch = 1 if lr is None else len(lr)
        rows = np.broadcast_to(np.asarray(temperature, np.float32), (batch, len(temperature)))
        return self.sample_rows(lr, [seed] * batch, first_sample, rows)
