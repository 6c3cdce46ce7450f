"""Per-input scores of a set of samples against their LR input and HR ground truth."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cvdvae.degradation import bicubic_degradation
from cvdvae.metrics import LPIPS, psnr, ssim

from ..images.summary import Summary


@dataclass
class Scores:
    lr_psnr: float       # dB, the samples' MATLAB downscale vs the LR input (0..255)
    apd_mse: float       # average pairwise MSE between samples, [0, 1] scale
    apd_lpips: float | None
    psnr: float          # dB vs the HR image, mean over samples
    ssim: float
    lpips: float | None
    mean_psnr: float | None = None        # dB, the samples' mean (unrounded) vs the HR image
    std_error_corr: float | None = None   # Pearson r over pixels: the std map vs the mean's error
    mean_std: float | None = None         # the per-pixel std of the samples (8-bit levels), averaged
    brisque: float | None = None          # BRISQUE of the samples (lower is better), mean over samples


def score(samples: torch.Tensor, lr: torch.Tensor, hr: torch.Tensor, scale: int, lpips: LPIPS | None) -> Scores:
    """``samples`` [n, 3, H, W] in [0, 1] (8-bit values, as saved), ``lr`` [3, h, w] and ``hr``
    [3, H, W] in 0..255."""
    n = samples.shape[0]
    down = bicubic_degradation(hr.shape[-1], scale).downscale(samples.double() * 255)
    lr_psnr = psnr(down, lr.double().expand_as(down), data_range=255.0).mean()
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    apd_mse = torch.stack([((samples[i] - samples[j]) ** 2).mean() for i, j in pairs]).mean() if pairs else None
    truth = (hr / 255.0).expand_as(samples)
    apd_lpips = fid_lpips = None
    if lpips is not None:
        feats = lpips.features(samples.float())
        apd_lpips = float(lpips.pairwise_distances(feats).sum() / (n * (n - 1))) if pairs else None
        fid_lpips = float(lpips.distance_from_features(feats, lpips.features(truth.float())).mean())
    return Scores(float(lr_psnr), float(apd_mse) if apd_mse is not None else float("nan"), apd_lpips,
                  float(psnr(samples, truth).mean()), float(ssim(samples, truth).mean()), fid_lpips)


def spread_scores(summary: Summary, hr: np.ndarray) -> tuple[float, float | None]:
    """The PSNR (dB) of the samples' mean against ``hr`` ([H, W, 3], 0..255), and the Pearson
    correlation over pixels between the standard deviation map and the mean's error there (the
    RMS over the three channels, as the map is): near 1, the model is unsure where it is wrong.
    None where either map is constant (n = 1 has no spread)."""
    error = summary.mean.astype(np.float64) - np.asarray(hr, np.float64)
    mse = float(np.mean(error ** 2))
    mean_psnr = 10 * math.log10(255.0 ** 2 / mse) if mse else math.inf
    error_map = np.sqrt(np.mean(error ** 2, axis=-1)).ravel()
    std = summary.std.astype(np.float64).ravel()
    if std.std() == 0 or error_map.std() == 0:
        return mean_psnr, None
    correlation = np.mean((std - std.mean()) * (error_map - error_map.mean())) / (std.std() * error_map.std())
    return mean_psnr, float(correlation)
