"""MATLAB ``imresize`` bicubic (antialiased) downscaling matrices, in numpy only.

Torch-free so that the runtime can degrade HR inputs (``cvdvae-run --from-hr``) on
machines without PyTorch; ``cvdvae.degradation`` builds the torch operators on top.
"""

from __future__ import annotations

import math

import numpy as np


def cubic_kernel(t: np.ndarray) -> np.ndarray:
    """Keys cubic with a = -0.5, the kernel MATLAB's 'bicubic' uses."""
    at = np.abs(t)
    at2 = at * at
    at3 = at2 * at
    near = (1.5 * at3 - 2.5 * at2 + 1.0) * (at <= 1.0)
    far = (-0.5 * at3 + 2.5 * at2 - 4.0 * at + 2.0) * ((at > 1.0) & (at <= 2.0))
    return near + far


def _check_positive_int(name: str, value: object) -> int:
    # bool is an int subclass; a factor of True is certainly a bug upstream.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_sizes(in_size: object, factor: object) -> tuple[int, int]:
    in_size = _check_positive_int("in_size", in_size)
    factor = _check_positive_int("factor", factor)
    if in_size % factor:
        raise ValueError(
            f"in_size={in_size} is not divisible by factor={factor}; MATLAB would "
            "round the output size up and the operator would no longer be a "
            "clean integer downscale"
        )
    return in_size, factor


def _mirror_indices(idx: np.ndarray, n: int) -> np.ndarray:
    """MATLAB's symmetric padding that repeats the edge sample; 1-based in, 0-based out."""
    aux = np.concatenate([np.arange(n), np.arange(n - 1, -1, -1)])
    return aux[np.mod(idx - 1, 2 * n)]


def resize_matrix(in_size: int, factor: int) -> np.ndarray:
    """Float64 matrix R, shape (in_size // factor, in_size), with imresize(v, 1/factor) == R @ v.

    Follows MATLAB's ``contributions`` step by step (stretched kernel, tap
    window, row normalisation, mirrored borders with accumulation) so that the
    border rows match MATLAB rather than a renormalised-kernel approximation.
    """
    in_size, factor = check_sizes(in_size, factor)
    if factor == 1:
        return np.eye(in_size)
    scale = 1.0 / factor
    width = 4.0 / scale
    out_size = in_size // factor
    j = np.arange(1, out_size + 1, dtype=np.float64)
    centre = j / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(centre - width / 2.0)
    taps = math.ceil(width) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based source indices
    weights = scale * cubic_kernel(scale * (centre[:, None] - idx))
    weights /= weights.sum(axis=1, keepdims=True)
    rows = np.broadcast_to(np.arange(out_size)[:, None], idx.shape)
    cols = _mirror_indices(idx.astype(np.int64), in_size)
    matrix = np.zeros((out_size, in_size))
    np.add.at(matrix, (rows, cols), weights)
    return matrix


def right_pseudo_inverse(a: np.ndarray) -> np.ndarray:
    """A^T (A A^T)^-1 via a symmetric solve, avoiding an explicit inverse."""
    return np.linalg.solve(a @ a.T, a).T


def downscale_uint8(image: np.ndarray, factor: int) -> np.ndarray:
    """The official 8-bit data preparation on a ``[..., H, W]`` array of 0..255 values:
    rows pass, clip, round half to even, columns pass, clip, round. Returns float32."""
    a = resize_matrix(image.shape[-2], factor)
    b = resize_matrix(image.shape[-1], factor)
    x = np.asarray(image, dtype=np.float64)
    rows = np.round(np.clip(a @ x, 0.0, 255.0))
    return np.round(np.clip(rows @ b.T, 0.0, 255.0)).astype(np.float32)
