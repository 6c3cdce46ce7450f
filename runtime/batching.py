"""Packing inputs x samples into engine calls within the profile (B images, n samples each)."""

from __future__ import annotations

from dataclasses import dataclass


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
