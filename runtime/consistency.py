"""The exact LR-consistency projection in numpy: each sample's downscale made equal to the LR input.

``x + P (y - A x A^T) P^T`` with ``A`` the MATLAB bicubic downscale matrix and ``P`` its right
pseudo-inverse (``cvdvae.bicubic``), then clamped to [0, 1]: what ``cvdvae export --consistent``
bakes into a graph, for graphs exported without it (``cvdvae serve``'s ``consistent``).
"""

from __future__ import annotations

import functools

import numpy as np

from cvdvae.bicubic import resize_matrix, right_pseudo_inverse


@functools.lru_cache(maxsize=8)
def _matrices(hr_size: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    a = resize_matrix(hr_size, factor)
    return a, right_pseudo_inverse(a)


def project(samples: np.ndarray, lr: np.ndarray, factor: int) -> np.ndarray:
    """``samples`` [n, 3, H, W] in [0, 1] and ``lr`` [3, h, w] 0..255 -> consistent samples (float32)."""
    a, p = _matrices(samples.shape[-1], factor)
    x = samples.astype(np.float64) * 255.0
    residual = lr.astype(np.float64)[None] - a @ x @ a.T
    return np.clip((x + p @ residual @ p.T) / 255.0, 0.0, 1.0).astype(np.float32)
