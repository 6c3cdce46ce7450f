"""Packing inputs x samples into engine calls within the profile (B images, n samples each)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Chunk:
    """Images ``images`` of the run, samples ``samples`` of each."""

    images: range
    samples: range


def sample_chunks(n: int, max_n: int) -> list[range]:
    """Split samples 0..n-1 into contiguous runs of at most ``max_n`` (balanced sizes)."""
    calls = -(-n // max_n)
    bounds = [round(i * n / calls) for i in range(calls + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def image_groups(num_images: int, max_batch: int) -> list[range]:
    return [range(i, min(i + max_batch, num_images)) for i in range(0, num_images, max_batch)]


def plan(num_images: int, n: int, max_batch: int, max_n: int) -> list[list[Chunk]]:
    """Per group of images, the calls that finish all their samples (so grids can be written)."""
    if min(n, max_batch, max_n) < 1:
        raise ValueError("n, max_batch and max_n must be at least 1")
    return [[Chunk(group, s) for s in sample_chunks(n, max_n)] for group in image_groups(num_images, max_batch)]


def sample_planned(backend: Any, lr: np.ndarray | None, seed: int, temperature: np.ndarray) -> np.ndarray:
    """Every sample [B, n, 3, H, W] of these images in calls within the backend's limits, as
    ``cvdvae run`` makes them; ``lr`` None (a prior-only model) is one row, B = 1."""
    batch, n = 1 if lr is None else len(lr), len(temperature)
    rows = []
    for group in plan(batch, n, backend.max_batch, backend.max_n):
        images = None if lr is None else lr[group[0].images.start:group[0].images.stop]
        calls = [backend.sample(images, seed, c.samples.start, temperature[c.samples.start:c.samples.stop])
                 for c in group]
        rows.append(np.concatenate(calls, axis=1))
    return np.concatenate(rows)
