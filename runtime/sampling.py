"""The one sampling path: requests packed into engine calls within a backend's limits.

A request (``Job``) is one LR image (None for a prior-only model) with its own seed (or noise
recipe: ``cvdvae.noise_recipe``) and temperatures ``[n]``. The graph takes ``noise [B, n, D]`` and ``temperature [B, n]``, so jobs
of equal n (and first sample) share calls, B rows at most ``max_batch``, and n is split into balanced chunks of
at most ``max_n`` samples; sample k of a job always has the noise of ``(seed, k)``
(docs/contract/noise-and-seeds.md), whatever the chunking.

Rows share a call when they share one seed or recipe, the whole recipe (one noise block serves them all: ``cvdvae run``
over many images) or when the backend's rows are independent (``Backend.rows_independent``:
row b of a call depends on row b's inputs alone, so a request gives the same bytes alone or
beside any other). OpenVINO's rows are independent; ONNX Runtime's are not (its vectorised
element-wise kernels round by position in the call), so there requests of different seeds
run one per call. tests/test_serve.py checks both.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from cvdvae.noise_recipe import Noise

from .backends import Backend
from .backends.interface import Sampled


@dataclass(frozen=True)
class Job:
    lr: np.ndarray | None       # [3, h, w] float32 0..255 (None: a prior-only model)
    seed: Noise                 # a seed, or a NoiseRecipe (its seed with a reference, a level, factors)
    temperature: np.ndarray     # [n] float32
    first: int = 0              # the samples are first .. first + n - 1 (a long run is drawn in passes)

    @property
    def n(self) -> int:
        return len(self.temperature)


def sample_chunks(n: int, max_n: int) -> list[range]:
    """Samples 0..n-1 in contiguous runs of at most ``max_n``, of balanced sizes."""
    if min(n, max_n) < 1:
        raise ValueError("n and max_n must be at least 1")
    calls = -(-n // max_n)
    bounds = [round(i * n / calls) for i in range(calls + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def sample_jobs(backend: Backend, jobs: list[Job],
                keep: Callable[[Sampled], Sampled] | None = None) -> list[Sampled]:
    """Every job's samples ``[n, 3, H, W]`` (float32 in [0, 1]) and their NaN/Inf counts ``[n]``,
    in the order given; or what ``keep`` makes of each as soon as its call is done (a photo's
    faces keep 8-bit pixels, so only one call's float32 samples exist at a time)."""
    results: list[Sampled | None] = [None] * len(jobs)
    alike: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, job in enumerate(jobs):
        alike[job.n, job.first].append(index)
    for indices in alike.values():
        for group in _call_groups(backend, [jobs[i] for i in indices], indices):
            rows = _sample_rows(backend, [jobs[i] for i in group])
            for row, i in enumerate(group):
                result = Sampled(rows.samples[row], rows.non_finite[row])
                results[i] = keep(result) if keep is not None else result
    return results  # type: ignore[return-value]


def sample_images(backend: Backend, lr: np.ndarray | None, seed: Noise, temperature: np.ndarray) -> Sampled:
    """``[B, n, 3, H, W]`` samples and ``[B, n]`` counts: every image of ``lr`` ([B, 3, h, w]; None:
    one draw of a prior-only model) with the noise of ``seed`` and the temperatures ``[n]``."""
    images = [None] if lr is None else list(lr)
    temperature = np.asarray(temperature, np.float32)
    results = sample_jobs(backend, [Job(image, seed, temperature) for image in images])
    return Sampled(np.stack([r.samples for r in results]), np.stack([r.non_finite for r in results]))


def _call_groups(backend: Backend, jobs: list[Job], indices: list[int]) -> list[list[int]]:
    """``indices`` (of jobs with one n and first sample) in groups that may share a call: one noise
    block serves a call whose rows have one seed and one whole recipe."""
    shared_noise = len({job.seed for job in jobs}) == 1
    rows = backend.max_batch if shared_noise or backend.rows_independent else 1
    return [indices[start:start + rows] for start in range(0, len(indices), rows)]


def _sample_rows(backend: Backend, jobs: list[Job]) -> Sampled:
    lr = None if jobs[0].lr is None else np.stack([job.lr for job in jobs])
    temperature = np.stack([job.temperature for job in jobs]).astype(np.float32)
    seeds = [job.seed for job in jobs]
    first = jobs[0].first
    calls = [backend.sample_rows(lr, seeds, first + chunk.start, temperature[:, chunk.start:chunk.stop])
             for chunk in sample_chunks(jobs[0].n, backend.max_n)]
    return Sampled(np.concatenate([c.samples for c in calls], axis=1),
                   np.concatenate([c.non_finite for c in calls], axis=1))
