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
from dataclasses import dataclass, field

import numpy as np
import torch

from . import bicubic
from .bicubic import check_sizes, cubic_kernel, resize_matrix, right_pseudo_inverse

__all__ = [
    "BicubicDegradation",
    "bicubic_degradation",
    "cubic_kernel",
    "project_separable",
    "resize_matrix",
]


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
        hr_size, factor = check_sizes(self.hr_size, self.factor)
        a = _frozen(resize_matrix(hr_size, factor))
        p = _frozen(right_pseudo_inverse(a))
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
        (they can differ by 1). Computed in float64 on the CPU (one implementation,
        shared with the torch-free runtime), so ties round the same way everywhere. ``x`` is uint8, or a float tensor already holding
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
        lr = bicubic.downscale_uint8(x.detach().cpu().numpy(), self.factor)
        return torch.from_numpy(lr).to(device=x.device, dtype=out_dtype)

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
