"""The bottleneck residual block every VD-VAE module is made of, and small tensor helpers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def conv(in_ch: int, out_ch: int, kernel: int, zero_weights: bool = False) -> nn.Conv2d:
    """A same-padded conv with zeroed bias, as every official conv starts out."""
    c = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
    with torch.no_grad():
        c.bias.zero_()
        if zero_weights:
            c.weight.zero_()
    return c


class Block(nn.Module):
    """``c4(gelu(c3(gelu(c2(gelu(c1(gelu(x))))))))``, optionally residual, optionally pooled.

    c1 and c4 are 1x1; c2 and c3 are 3x3, except at resolutions 1 and 2 where a 3x3
    kernel would see only padding. The residual uses the un-activated input, and pooling
    comes after the residual add.
    """

    def __init__(self, in_width: int, mid_width: int, out_width: int, *, use_3x3: bool,
                 residual: bool = False, down_rate: int | None = None, zero_last: bool = False):
        super().__init__()
        k = 3 if use_3x3 else 1
        self.c1 = conv(in_width, mid_width, 1)
        self.c2 = conv(mid_width, mid_width, k)
        self.c3 = conv(mid_width, mid_width, k)
        self.c4 = conv(mid_width, out_width, 1, zero_weights=zero_last)
        self.residual = residual
        self.down_rate = down_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.gelu(x))
        h = self.c2(F.gelu(h))
        h = self.c3(F.gelu(h))
        h = self.c4(F.gelu(h))
        out = x + h if self.residual else h
        if self.down_rate is not None:
            out = F.avg_pool2d(out, kernel_size=self.down_rate, stride=self.down_rate)
        return out

    def scale_last(self, factor: float) -> None:
        """The official init shrinks residual branches by sqrt(1 / number of blocks)."""
        with torch.no_grad():
            self.c4.weight.mul_(factor)


def depth_scale(n_blocks: int) -> float:
    return math.sqrt(1.0 / n_blocks)


def pad_channels(x: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad the channel axis up to ``width`` (a no-op when it already has that many)."""
    missing = width - x.shape[1]
    return F.pad(x, (0, 0, 0, 0, 0, missing)) if missing else x


def upsample_nearest(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Integer-factor nearest upsampling as a broadcast, which every exporter keeps exact."""
    if factor == 1:
        return x
    _, c, h, w = x.shape
    x = x[:, :, :, None, :, None].expand(-1, -1, -1, factor, -1, factor)
    return x.reshape(-1, c, h * factor, w * factor)
