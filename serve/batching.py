"""Requests packed into engine calls: rows of one call are requests with the same n.

A request is one LR image with its own seed, n and temperatures. The graph takes
``noise [B, n, D]`` and ``temperature [B, n]``, so requests of equal n share a call, each row
with the noise of its own seed (``sample_rows``); n beyond the backend's ``max_n`` is split
into sample chunks as ``cvdvae run`` splits it.

Requests share a call only on a backend whose rows are independent (``rows_independent``):
there row b of a call depends on row b's inputs alone, so a request's samples are the same
bytes alone or in any batch. Measured on the demo graph: OpenVINO, bit-identical over 64
seeds in calls of 4 rows; ONNX Runtime, up to 1,246 values of a row differing by ~3e-6 with
its position in the call (its vectorised element-wise kernels round by position), so
ONNX Runtime, and TensorRT (noise made per call on the GPU), run each request on its own.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.batching import sample_chunks


@dataclass(frozen=True)
class Job:
    lr: np.ndarray | None       # [3, h, w] float32 0..255 (None: a prior-only model)
    seed: int
    temperature: np.ndarray     # [n] float32

    @property
    def n(self) -> int:
        return len(self.temperature)


def run_jobs(backend: Any, jobs: list[Job]) -> list[np.ndarray]:
    """Every job's samples ``[n, 3, H, W]``, in the order given, in as few calls as the backend allows."""
    results: list[np.ndarray | None] = [None] * len(jobs)
    by_n: dict[int, list[int]] = defaultdict(list)
    for index, job in enumerate(jobs):
        by_n[job.n].append(index)
    rows_per_call = backend.max_batch if getattr(backend, "rows_independent", False) else 1
    for n, indices in by_n.items():
        for start in range(0, len(indices), rows_per_call):
            group = indices[start:start + rows_per_call]
            samples = _run_rows(backend, [jobs[i] for i in group], n)
            for i, row in zip(group, samples):
                results[i] = row
    return results  # type: ignore[return-value]


def _run_rows(backend: Any, jobs: list[Job], n: int) -> np.ndarray:
    lr = None if jobs[0].lr is None else np.stack([job.lr for job in jobs])
    temperature = np.stack([job.temperature for job in jobs]).astype(np.float32)
    calls = []
    for chunk in sample_chunks(n, backend.max_n):
        t = temperature[:, chunk.start:chunk.stop]
        if len(jobs) > 1:
            calls.append(backend.sample_rows(lr, [job.seed for job in jobs], chunk.start, t))
        else:
            calls.append(backend.sample(lr, jobs[0].seed, chunk.start, t[0]))
    return np.concatenate(calls, axis=1)
