"""``Backend``: what every engine fills in, and all that its callers may use."""

from __future__ import annotations

from typing import NamedTuple, Protocol, Sequence

import numpy as np

from cvdvae.noise_recipe import Noise

from ..timings import Timings


class Sampled(NamedTuple):
    """What a call gives: the samples and, per sample, the NaN and Inf values seen."""

    samples: np.ndarray      # [B, n, 3, H, W] float32 in [0, 1]
    non_finite: np.ndarray   # [B, n] int64; > 0: the sample is broken, whatever its pixels say


def sampled(samples: np.ndarray, reported: np.ndarray | None = None) -> Sampled:
    """The samples with their counts: the graph's own ``non_finite`` output where it has one
    (counted before the clamps an engine may turn NaN into numbers with), and never fewer than
    the NaN/Inf the samples themselves hold."""
    batch, n = samples.shape[:2]
    seen = (~np.isfinite(samples.reshape(batch, n, -1))).sum(axis=2)
    if reported is not None:
        # A count too large for float32 is itself infinite: still broken.
        seen = np.maximum(seen, np.nan_to_num(np.asarray(reported, np.float64), nan=1.0, posinf=2**62).astype(np.int64))
    return Sampled(samples, seen.astype(np.int64))


class Backend(Protocol):
    """What every engine fills in; engines subclass it to inherit ``sample``."""

    name: str                      # tensorrt, openvino, onnxruntime or torch
    precision: str                 # what the engine computes in, as it reports: fp32, fp16, bf16
    max_batch: int                 # images per call
    max_n: int                     # samples per image per call
    timings: Timings
    provider: str | None = None    # the device or execution provider that runs it
    note: str | None = None        # why ``auto`` fell back from a faster engine, when it did
    cuda_graphs: str | None = None  # TensorRT: "on", or "off" and why
    rows_independent: bool = False  # row b of a call is bit-identical to row b run alone
    fp32_groups: tuple[str, ...] = ()  # op groups kept in float32 under a reduced compute precision

    def sample_rows(self, lr: np.ndarray | None, seeds: Sequence[Noise], first_sample: int,
                    temperature: np.ndarray) -> Sampled:
        """Row b is image ``lr[b]`` ([B, 3, h, w], 0..255; None for a prior-only model) with the noise
        of ``seeds[b]`` (a seed, or a checked ``NoiseRecipe``: ``cvdvae.noise_recipe.compose``) for
        samples ``first_sample ..`` and ``temperature[b]`` ([B, n]) -> its samples [B, n, 3, H, W] in
        [0, 1] and their NaN/Inf counts [B, n]."""
        ...

    def wait_ready(self) -> None:
        """Return once the engine can run: an engine may finish opening while its caller goes on
        (OpenVINO imports a kept model on a thread of its own), and its first call waits for it."""

    def sample(self, lr: np.ndarray | None, seed: Noise, first_sample: int, temperature: np.ndarray) -> Sampled:
        """Every row with one seed and the temperatures ``temperature`` [n]."""
        batch = 1 if lr is None else len(lr)
        rows = np.broadcast_to(np.asarray(temperature, np.float32), (batch, len(temperature)))
        return self.sample_rows(lr, [seed] * batch, first_sample, rows)
