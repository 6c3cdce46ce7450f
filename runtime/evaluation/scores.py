"""Per-input scores of a set of samples against their LR input and HR ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cvdvae.degradation import bicubic_degradation
from cvdvae.metrics import LPIPS, psnr, ssim


@dataclass
class Scores:
    lr_psnr: float       # dB, the samples' MATLAB downscale vs the LR input (0..255)
    apd_mse: float       # average pairwise MSE between samples, [0, 1] scale
    apd_lpips: float | None
    psnr: float          # dB vs the HR image, mean over samples
    ssim: float
    lpips: float | None


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
