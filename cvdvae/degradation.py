"""MATLAB-compatible antialiased bicubic downscaling as constant matrices.

The training pairs were made with MATLAB ``imresize(hr, 1/f, 'bicubic')``,
so the low-resolution observation is an exact linear function of the
high-resolution image: ``y = A x B^T`` with one fixed matrix per axis. Writing
it as two matmuls (instead of a resampling routine) keeps the operator
ONNX-exportable, reproduces MATLAB's symmetric edge handling exactly (unlike
``F.interpolate(..., antialias=True)``, which renormalises the kernel at the
borders and so differs in the outer 1-2 pixels), and makes the exact
LR-consistency projection ``x + P (y - A x B^T) P^T`` with the pseudo-inverse
``P = A^T (A A^T)^-1`` available in closed form.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "BicubicDegradation",
    "bicubic_degradation",
    "cubic_kernel",
    "project_separable",
    "resize_matrix",
]


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


def _check_sizes(in_size: object, factor: object) -> tuple[int, int]:
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
    in_size, factor = _check_sizes(in_size, factor)
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


def _right_pseudo_inverse(a: np.ndarray) -> np.ndarray:
    """A^T (A A^T)^-1 via a symmetric solve, avoiding an explicit inverse."""
    return np.linalg.solve(a @ a.T, a).T


def _frozen(a: np.ndarray) -> np.ndarray:
    # The matrices are shared through the lru_cache; a stray in-place edit
    # would silently corrupt every caller.
    a.setflags(write=False)
    return a


def project_separable(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                      p_a: torch.Tensor, p_b: torch.Tensor) -> torch.Tensor:
    """x + P_A (y - A x B^T) P_B^T with the matrices given, so a module can hold them as buffers."""
    residual = y - a @ x @ b.transpose(-1, -2)
    return x + p_a @ residual @ p_b.transpose(-1, -2)


@dataclass(frozen=True, eq=False)
class BicubicDegradation:
    """The bicubic degradation for square hr_size images and an integer factor.

    ``A`` acts on rows (dim -2) and ``B`` on columns (dim -1); they are equal
    for square images but kept apart so the code reads ``y = A x B^T``.
    ``P_A``/``P_B`` are their right pseudo-inverses, used by ``project``.
    """

    hr_size: int
    factor: int
    A: np.ndarray = field(init=False, repr=False)
    B: np.ndarray = field(init=False, repr=False)
    P_A: np.ndarray = field(init=False, repr=False)
    P_B: np.ndarray = field(init=False, repr=False)
    _tensors: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        hr_size, factor = _check_sizes(self.hr_size, self.factor)
        a = _frozen(resize_matrix(hr_size, factor))
        p = _frozen(_right_pseudo_inverse(a))
        for name, value in (("hr_size", hr_size), ("factor", factor),
                            ("A", a), ("B", a), ("P_A", p), ("P_B", p)):
            object.__setattr__(self, name, value)

    @property
    def lr_size(self) -> int:
        """Side of the LR observation; exact since construction checked divisibility."""
        return self.hr_size // self.factor

    def _matrix(self, name: str, like: torch.Tensor) -> torch.Tensor:
        # Cached per dtype/device so a GPU training loop does not re-upload
        # the constants on every call.
        key = (name, like.dtype, like.device)
        cached = self._tensors.get(key)
        if cached is None:
            # torch.tensor copies, so the read-only numpy source stays untouched.
            cached = torch.tensor(getattr(self, name), dtype=like.dtype, device=like.device)
            self._tensors[key] = cached
        return cached

    def _check_shape(self, t: torch.Tensor, size: int, what: str) -> None:
        if t.dim() < 2 or tuple(t.shape[-2:]) != (size, size):
            raise ValueError(
                f"{what} must have shape [..., {size}, {size}], got {tuple(t.shape)}"
            )

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._matrix("A", x) @ x @ self._matrix("B", x).transpose(-1, -2)

    def downscale(self, x: torch.Tensor) -> torch.Tensor:
        """A x B^T in x's dtype/device; purely linear so it can sit inside losses and exports."""
        if not x.is_floating_point():
            raise TypeError(f"downscale expects a floating tensor, got {x.dtype}; "
                            "use downscale_uint8 for 8-bit images")
        self._check_shape(x, self.hr_size, "x")
        return self._apply(x)

    def downscale_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """Reproduce the 8-bit data preparation, including its intermediate quantisation.

        The stored LR images were quantised after each 1-D pass (rows, then
        columns): clip to [0, 255] and round half-to-even. Exact reproduction
        needs that intermediate rounding, so this is not ``round(downscale(x))``
        (they can differ by 1). Computed in float64 so ties round the same way
        on every device. ``x`` is uint8, or a float tensor already holding
        integers in [0, 255]. Returns a float tensor with integer values in
        [0, 255]: x's dtype for float input, float32 for uint8 input, since the
        model consumes floats.
        """
        if x.dtype == torch.uint8:
            out_dtype = torch.float32
        elif x.is_floating_point():
            out_dtype = x.dtype
        else:
            raise TypeError(f"downscale_uint8 expects uint8 or float, got {x.dtype}")
        self._check_shape(x, self.hr_size, "x")
        x64 = x.to(torch.float64)
        rows = torch.round((self._matrix("A", x64) @ x64).clamp(0.0, 255.0))
        cols = rows @ self._matrix("B", x64).transpose(-1, -2)
        return torch.round(cols.clamp(0.0, 255.0)).to(out_dtype)

    def project(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Closest image to x (in Frobenius norm) whose downscale is exactly y.

        x + P_A (y - A x B^T) P_B^T: the correction lies in the row space of
        the operator, so the HR detail the observation cannot see is left
        untouched. x and y must be in the same units; the result is in x's
        dtype. Idempotent, and a no-op when x already downsamples to y.
        """
        if not x.is_floating_point():
            raise TypeError(f"project expects a floating x, got {x.dtype}")
        self._check_shape(x, self.hr_size, "x")
        self._check_shape(y, self.lr_size, "y")
        return project_separable(x, y.to(x.dtype), *(self._matrix(n, x) for n in ("A", "B", "P_A", "P_B")))


@functools.lru_cache(maxsize=None)
def bicubic_degradation(hr_size: int, factor: int) -> BicubicDegradation:
    """Shared instance per (hr_size, factor) so the matrices are built once."""
    return BicubicDegradation(hr_size, factor)
