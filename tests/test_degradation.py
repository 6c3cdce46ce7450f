"""Tests for cvdvae.degradation: MATLAB bicubic matrices and the LR projection.

Tolerances are on [0, 255] data. The bicubic-pytorch oracle internally casts
to float32, which limits agreement with its ``imresize`` to ~5e-5; its 1-D
routine run in float64 agrees to ~1e-13, hence the tighter second check.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvdvae.degradation import (
    BicubicDegradation,
    bicubic_degradation,
    cubic_kernel,
    resize_matrix,
)

ORACLE_CASES = [(32, 4), (256, 4), (256, 8), (256, 16), (16, 2)]
PROJECTION_CASES = [(256, 4), (256, 8), (256, 16), (32, 4)]


def _rand_image(gen: torch.Generator, *shape: int, dtype=torch.float64) -> torch.Tensor:
    return (torch.rand(*shape, generator=gen, dtype=torch.float64) * 255).to(dtype)


def _oracle_pass(x: torch.Tensor, dim: int, factor: int) -> torch.Tensor:
    """One 1-D MATLAB-style pass from bicubic-pytorch on a [B, C, H, W] tensor."""
    core = pytest.importorskip("bicubic_pytorch").core
    b, c, h, w = x.shape
    size = (h if dim == -2 else w) // factor
    out = core.resize_1d(x.reshape(b * c, 1, h, w), dim, size=size, scale=1 / factor)
    return out.reshape(b, c, *out.shape[-2:])


# --- 1. independent oracle -------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("hr_size,factor", ORACLE_CASES)
def test_downscale_matches_bicubic_pytorch(hr_size, factor, dtype):
    core = pytest.importorskip("bicubic_pytorch").core
    gen = torch.Generator().manual_seed(hr_size * 100 + factor)
    x = _rand_image(gen, 2, 3, hr_size, hr_size, dtype=dtype)
    ours = bicubic_degradation(hr_size, factor).downscale(x)
    ref = core.imresize(x, scale=1 / factor)
    assert ours.dtype == dtype
    assert ours.shape == ref.shape == (2, 3, hr_size // factor, hr_size // factor)
    assert (ours - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("hr_size,factor", ORACLE_CASES)
def test_downscale_matches_oracle_per_axis_in_float64(hr_size, factor):
    gen = torch.Generator().manual_seed(hr_size + factor)
    x = _rand_image(gen, 1, 2, hr_size, hr_size)
    ref = _oracle_pass(_oracle_pass(x, -2, factor), -1, factor)
    ours = bicubic_degradation(hr_size, factor).downscale(x)
    assert (ours - ref).abs().max().item() <= 1e-9


# --- 2. closed-form properties ---------------------------------------------


@pytest.mark.parametrize("hr_size,factor", ORACLE_CASES + [(8, 2), (64, 16)])
def test_rows_sum_to_one_and_constants_are_preserved(hr_size, factor):
    a = resize_matrix(hr_size, factor)
    assert a.shape == (hr_size // factor, hr_size)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    x = torch.full((hr_size, hr_size), 137.25, dtype=torch.float64)
    y = bicubic_degradation(hr_size, factor).downscale(x)
    np.testing.assert_allclose(y.numpy(), 137.25, rtol=0, atol=1e-10)


def test_cubic_kernel_values():
    t = np.array([0.0, 0.25, 0.75, 1.0, 1.25, 1.75, 2.0, 2.5, -0.25, -1.25])
    expected = [1.0, 0.8671875, 0.2265625, 0.0, -0.0703125, -0.0234375, 0.0, 0.0,
                0.8671875, -0.0703125]
    np.testing.assert_array_equal(cubic_kernel(t), expected)


def test_hand_computed_rows_n8_f2():
    # s = 1/2, width = 8, 10 taps. Stretched weights h(d) = cubic(d / 2) / 2:
    # |d| = 0.5 -> 0.43359375, 1.5 -> 0.11328125, 2.5 -> -0.03515625,
    # 3.5 -> -0.01171875, 4.5 -> 0. They already sum to 1 (no renormalising).
    h05, h15, h25, h35 = 0.43359375, 0.11328125, -0.03515625, -0.01171875
    # Row j=1: u = 1.5, taps i = -3..6. Mirrors: i=0->1, -1->2, -2->3, -3->4.
    # Source 1 gets i in {0, 1}, 2 gets {-1, 2}, 3 gets {-2, 3}, 4: {-3, 4}.
    row1 = [h15 + h05, h25 + h05, h35 + h15, 0.0 + h25, h35, 0.0, 0.0, 0.0]
    # Row j=2: u = 3.5, taps i = -1..8. i=0 and i=1 both mirror onto source 1.
    row2 = [h35 + h25, h15, h05, h05, h15, h25, h35, 0.0]
    # Last row mirrors the first one (the operator is symmetric under flips).
    a = resize_matrix(8, 2)
    np.testing.assert_allclose(a[0], row1, rtol=0, atol=1e-15)
    np.testing.assert_allclose(a[1], row2, rtol=0, atol=1e-15)
    np.testing.assert_allclose(a[3], row1[::-1], rtol=0, atol=1e-15)
    np.testing.assert_allclose(a[2], row2[::-1], rtol=0, atol=1e-15)


def test_factor_one_is_identity():
    np.testing.assert_array_equal(resize_matrix(12, 1), np.eye(12))
    x = torch.randn(3, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(bicubic_degradation(12, 1).downscale(x), x)


def test_downscale_leading_dims_dtype_and_linearity():
    deg = bicubic_degradation(32, 4)
    gen = torch.Generator().manual_seed(1)
    x = _rand_image(gen, 2, 1, 3, 32, 32)
    z = _rand_image(gen, 32, 32)
    y = deg.downscale(x)
    assert y.shape == (2, 1, 3, 8, 8)
    torch.testing.assert_close(deg.downscale(x[1, 0, 2]), y[1, 0, 2], rtol=0, atol=1e-12)
    torch.testing.assert_close(deg.downscale(2 * x - z), 2 * y - deg.downscale(z),
                               rtol=0, atol=1e-10)
    assert deg.downscale(x.float()).dtype == torch.float32


# --- 3. projection ---------------------------------------------------------


@pytest.mark.parametrize("hr_size,factor", PROJECTION_CASES)
def test_projection_is_consistent_idempotent_and_orthogonal(hr_size, factor):
    deg = bicubic_degradation(hr_size, factor)
    lr = hr_size // factor
    gen = torch.Generator().manual_seed(7 * hr_size + factor)
    x = _rand_image(gen, 2, 3, hr_size, hr_size)
    y = _rand_image(gen, 2, 3, lr, lr)

    p = deg.project(x, y)
    assert p.shape == x.shape and p.dtype == x.dtype
    assert (deg.downscale(p) - y).abs().max().item() <= 1e-4
    assert (deg.project(p, y) - p).abs().max().item() <= 1e-4

    # p is the *closest* consistent image: the correction is orthogonal to
    # every null-space direction n (downscale(n) == 0).
    z = _rand_image(gen, 2, 3, hr_size, hr_size)
    n = deg.project(z, torch.zeros_like(y))
    assert deg.downscale(n).abs().max().item() <= 1e-4
    inner = ((p - x) * n).sum(dim=(-2, -1))
    scale = (p - x).norm(dim=(-2, -1)) * n.norm(dim=(-2, -1))
    assert (inner.abs() / scale).max().item() <= 1e-10


@pytest.mark.parametrize("hr_size,factor", PROJECTION_CASES)
def test_projection_leaves_consistent_images_unchanged(hr_size, factor):
    deg = bicubic_degradation(hr_size, factor)
    gen = torch.Generator().manual_seed(hr_size - factor)
    x = _rand_image(gen, 2, hr_size, hr_size)
    assert (deg.project(x, deg.downscale(x)) - x).abs().max().item() <= 1e-4


def test_projection_float32_is_consistent_to_float32_precision():
    # float32 matmuls over 256-sample rows at magnitude 255 leave ~1e-4 error.
    deg = bicubic_degradation(256, 4)
    gen = torch.Generator().manual_seed(3)
    x = _rand_image(gen, 2, 3, 256, 256, dtype=torch.float32)
    y = _rand_image(gen, 2, 3, 64, 64, dtype=torch.float32)
    p = deg.project(x, y)
    assert p.dtype == torch.float32
    assert (deg.downscale(p) - y).abs().max().item() <= 1e-3
    assert (deg.project(p, y) - p).abs().max().item() <= 1e-3


def test_pseudo_inverse_is_well_conditioned_right_inverse():
    for hr_size in (32, 64, 128, 256):
        for factor in (2, 4, 8, 16):
            deg = bicubic_degradation(hr_size, factor)
            assert np.linalg.cond(deg.A @ deg.A.T) < 10
            np.testing.assert_allclose(deg.A @ deg.P_A, np.eye(deg.lr_size), rtol=0,
                                       atol=1e-12)


# --- 4. 8-bit data preparation ---------------------------------------------


@pytest.mark.parametrize("hr_size,factor", [(256, 4), (64, 8), (16, 2)])
def test_downscale_uint8_matches_per_pass_rounded_oracle(hr_size, factor):
    deg = bicubic_degradation(hr_size, factor)
    gen = torch.Generator().manual_seed(hr_size * factor)
    x8 = torch.randint(0, 256, (2, 3, hr_size, hr_size), generator=gen, dtype=torch.uint8)
    ours = deg.downscale_uint8(x8)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, ours.round()) and ours.min() >= 0 and ours.max() <= 255

    x = x8.double()
    rows = _oracle_pass(x, -2, factor).clamp(0, 255).round()
    ref = _oracle_pass(rows, -1, factor).clamp(0, 255).round()
    assert torch.equal(ours.double(), ref)

    rounded_once = deg.downscale(x).clamp(0, 255).round()
    diff = (ours.double() - rounded_once).abs()
    assert diff.max().item() <= 1
    if hr_size == 256:
        # Intermediate rounding is observable, so the check above has teeth.
        assert diff.max().item() == 1

    # Float input holding the same integers gives the same result, in its dtype.
    from_float = deg.downscale_uint8(x)
    assert from_float.dtype == torch.float64
    assert torch.equal(from_float, ours.double())


def test_downscale_uint8_clips_between_passes():
    # Off-grid binary blocks: the negative lobes overshoot past 0 and 255 in
    # the row pass already, so the intermediate clip changes the final values.
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 2, (8, 8), generator=gen, dtype=torch.uint8) * 255
    x8 = torch.roll(blocks.repeat_interleave(4, 0).repeat_interleave(4, 1), (2, 2), (0, 1))
    deg = bicubic_degradation(32, 4)
    x = x8.double()[None, None]
    row_pass = _oracle_pass(x, -2, 4)
    assert row_pass.min() < -0.5 and row_pass.max() > 255.5

    ours = deg.downscale_uint8(x8).double()
    ref = _oracle_pass(row_pass.clamp(0, 255).round(), -1, 4).clamp(0, 255).round()[0, 0]
    assert torch.equal(ours, ref)
    unclipped_mid = _oracle_pass(row_pass.round(), -1, 4).clamp(0, 255).round()[0, 0]
    assert not torch.equal(ours, unclipped_mid)


# --- 5. errors and sharing --------------------------------------------------


@pytest.mark.parametrize(
    "in_size,factor,match",
    [(30, 4, "divisible"), (32, 0, ">= 1"), (32, -2, ">= 1"), (32, 2.0, "integer"),
     (32, True, "integer"), (0, 1, ">= 1")],
)
def test_invalid_sizes_raise(in_size, factor, match):
    with pytest.raises(ValueError, match=match):
        resize_matrix(in_size, factor)
    with pytest.raises(ValueError, match=match):
        BicubicDegradation(in_size, factor)


def test_wrong_shapes_and_dtypes_raise():
    deg = bicubic_degradation(32, 4)
    with pytest.raises(ValueError, match=r"\[\.\.\., 32, 32\]"):
        deg.downscale(torch.zeros(1, 32, 16))
    with pytest.raises(ValueError, match=r"\[\.\.\., 8, 8\]"):
        deg.project(torch.zeros(32, 32), torch.zeros(16, 16))
    with pytest.raises(TypeError):
        deg.downscale(torch.zeros(32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError):
        deg.downscale_uint8(torch.zeros(32, 32, dtype=torch.int32))


def test_cached_constructor_shares_read_only_matrices():
    deg = bicubic_degradation(64, 4)
    assert bicubic_degradation(64, 4) is deg
    assert deg.hr_size == 64 and deg.factor == 4 and deg.lr_size == 16
    np.testing.assert_array_equal(deg.A, deg.B)
    with pytest.raises(ValueError):
        deg.A[0, 0] = 1.0
