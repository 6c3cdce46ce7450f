"""Full-reference image metrics in torch: PSNR and Gaussian SSIM, batched, no extra dependencies.

Conventions (chosen to match scikit-image, the tests' oracle, and the usual face-SR tables):

* Inputs are ``[N, C, H, W]`` tensors (``[C, H, W]`` is taken as a batch of one), values in
  ``[0, data_range]``; ``data_range`` defaults to 1.0 (images in [0, 1]). Pass 255 for 0..255.
  Integer tensors (uint8) are accepted and converted.
* The metrics are computed on the channels as given: RGB, no conversion to Y, **no border crop**,
  no rounding or clipping. For the grey-level SSIM of MATLAB's ``ssim(rgb2gray(a), rgb2gray(b))``
  on uint8 images use ``ssim(rgb_to_gray(a), rgb_to_gray(b), data_range=255)`` with the uint8
  tensors (``rgb_to_gray`` rounds integer images as MATLAB does).
* One value per image, shape ``[N]``. The reductions run in float64 (cheap next to any model, and
  it avoids the cancellation in E[x²] - E[x]² in float32); the result has the inputs' floating
  dtype (float32 for integer inputs).

PSNR = 10 log10(data_range² / MSE) with the MSE over all C·H·W values of an image (as
``skimage.metrics.peak_signal_noise_ratio`` on an RGB image); identical images give +inf.

SSIM is Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
population (not sample) covariances, averaged over the valid region only (the window never
leaves the image, i.e. a border of 5 pixels has no SSIM value of its own), computed per channel
and then averaged over the channels. This equals
``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=..., channel_axis=...)`` and MATLAB's ``ssim``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["psnr", "ssim", "rgb_to_gray", "gaussian_window", "MATLAB_GRAY_WEIGHTS"]

# MATLAB rgb2gray: the rows of inv(ycbcr->rgb) giving Y, normalised to sum to 1 (not BT.601's
# rounded 0.299/0.587/0.114).
MATLAB_GRAY_WEIGHTS = (0.298936021293775, 0.587043074451121, 0.114020904255103)

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape [N, C, H, W] (or [C, H, W]), got {tuple(x.shape)}")
    return x


def _pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    x, y = _as_batch(x, "x"), _as_batch(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    out_dtype = x.dtype if x.dtype.is_floating_point else torch.float32
    return x.to(torch.float64), y.to(torch.float64), out_dtype


def _check_range(data_range: float) -> float:
    data_range = float(data_range)
    if not data_range > 0 or not math.isfinite(data_range):
        raise ValueError(f"data_range must be a positive number, got {data_range}")
    return data_range


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, ``[N]``; +inf where the images are equal."""
    data_range = _check_range(data_range)
    x, y, out_dtype = _pair(x, y)
    mse = (x - y).square().flatten(1).mean(dim=1)
    return (10.0 * torch.log10(data_range**2 / mse)).to(out_dtype)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float64,
                    device=None) -> torch.Tensor:
    """The normalised 1-D Gaussian, ``[size]``; SSIM's 2-D window is its outer product."""
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _band(n: int, g: torch.Tensor) -> torch.Tensor:
    """``[n, n - k + 1]`` matrix M with ``(v @ M)[j] = sum_t g[t] v[j + t]`` (valid 1-D correlation)."""
    k = g.numel()
    m = g.new_zeros(n, n - k + 1)
    j = torch.arange(n - k + 1, device=g.device)
    for t in range(k):
        m[j + t, j] = g[t]
    return m


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of every channel of ``[B, C, H, W]``, valid region only.

    Written as two matrix products with banded matrices: in float64 on a CPU that is faster than
    a depthwise ``conv2d``, and the sums are the same.
    """
    h, w = x.shape[-2:]
    return _band(h, g).T @ (x @ _band(w, g))


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Gaussian SSIM per image, ``[N]`` (mean over the valid region and then over channels)."""
    data_range = _check_range(data_range)
    x, y, out_dtype = _pair(x, y)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, "
                         f"got {tuple(x.shape[-2:])}")
    # Work in [0, 1]: the same SSIM (the constants scale with data_range), smaller magnitudes.
    x, y = x / data_range, y / data_range
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    g = gaussian_window(device=x.device)
    c = x.shape[1]
    # One filter pass over x, y, x², y², xy (stacked along the channel axis).
    stats = _filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), g)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.split(c, dim=1)
    var_x = e_xx - mu_x.square()
    var_y = e_yy - mu_y.square()
    cov = e_xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2)
    per_channel = (num / den).flatten(2).mean(dim=2)  # [N, C]
    return per_channel.mean(dim=1).to(out_dtype)


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """MATLAB ``rgb2gray``: ``[N, 3, H, W]`` -> ``[N, 1, H, W]``, same scale and dtype.

    Like MATLAB, an integer (uint8) image gives an integer image: the weighted sum is computed
    in float64 and rounded to the nearest integer. This rounding matters at the 1e-3 level for
    SSIM (MATLAB's ``ssim(rgb2gray(a), rgb2gray(b))`` on uint8 images includes it). A floating
    image is not rounded.
    """
    x = _as_batch(x, "x")
    if x.shape[1] != 3:
        raise ValueError(f"rgb_to_gray needs 3 channels, got {x.shape[1]}")
    w = torch.tensor(MATLAB_GRAY_WEIGHTS, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
    if x.dtype.is_floating_point:
        return (x * w.to(x.dtype)).sum(dim=1, keepdim=True)
    if x.dtype == torch.bool:
        raise TypeError("rgb_to_gray needs a numeric image, got bool")
    gray = (x.to(torch.float64) * w).sum(dim=1, keepdim=True).round()
    info = torch.iinfo(x.dtype)
    return gray.clamp(info.min, info.max).to(x.dtype)
