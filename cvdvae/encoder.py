"""The bottom-up encoder: the VD-VAE HR encoder and the CVDVAE LR encoder are one class."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import Block, conv, depth_scale, pad_channels
from .layer_string import Layer


class Encoder(nn.Module):
    """``in_conv`` then residual blocks; returns the last activation at each resolution.

    Keys (``in_conv``, ``enc_blocks.{i}.c{1..4}``) and shapes are the official ones.
    """

    def __init__(self, layers: list[Layer], width: int, width_at, bottleneck, in_channels: int = 3):
        super().__init__()
        self.in_conv = conv(in_channels, width, 3)
        self.enc_blocks = nn.ModuleList(
            Block(width_at(res), bottleneck(width_at(res)), width_at(res),
                  use_3x3=res > 2, residual=True, down_rate=down)
            for res, down in layers
        )
        self._out_widths = [width_at(res // down if down else res) for res, down in layers]
        for block in self.enc_blocks:
            block.scale_last(depth_scale(len(layers)))

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """``x``: normalised images ``[N, 3, S, S]``; returns ``{resolution: [N, C, r, r]}``."""
        x = self.in_conv(x)
        activations = {x.shape[-1]: x}
        for block, out_width in zip(self.enc_blocks, self._out_widths):
            x = pad_channels(block(x), out_width)
            activations[x.shape[-1]] = x
        return activations
