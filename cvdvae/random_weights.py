"""Models with seeded random weights: the built-in demo model and stand-ins for timing.

No CVDVAE weights are public, so tests, benchmarks and the demo need models whose every
tensor (including the ones the official init zeroes) is random but reproducible.
"""

from __future__ import annotations

import math
import zlib

import torch

from .config import CVDVAEConfig, preset
from .model import CVDVAE

DEMO_PRESET = "tiny-x4"


@torch.no_grad()
def randomize_(model: CVDVAE, seed: int = 0) -> CVDVAE:
    """Overwrite every parameter in place from ``seed``; buffers (shift, scale) are kept."""
    for name, param in model.named_parameters():
        # Each tensor's values depend on (seed, name) only, so a model with and one without
        # the training-only parts get the same weights for the parts they share.
        gen = torch.Generator().manual_seed(seed * 0x9E3779B1 + zlib.crc32(name.encode()))
        noise = torch.randn(param.shape, generator=gen)
        if name == "decoder.gain":
            param.copy_(1.0 + 0.1 * noise)
        elif param.dim() == 4 and ".bias_xs." not in name:
            param.copy_(0.5 * noise / math.sqrt(param[0].numel()))
        else:
            param.copy_(0.1 * noise)  # conv biases and the initial decoder states
    _narrow_pixel_scales_(model.decoder.out_net.out_conv, model.config.num_mixtures)
    return model


def _narrow_pixel_scales_(out_conv: torch.nn.Conv2d, m: int) -> None:
    """Start the DMOL log-scales near -3 so that samples are images, not clamped 0/1 noise."""
    for colour in range(3):
        start = m + 3 * m * colour + m  # the log-scale block of this colour
        out_conv.bias[start:start + m] -= 3.0


def random_model(config: CVDVAEConfig, seed: int = 0, *, with_posterior: bool = False) -> CVDVAE:
    return randomize_(CVDVAE(config, with_posterior=with_posterior), seed).eval()


def demo_model(seed: int = 0) -> CVDVAE:
    """The built-in untrained ``tiny-x4`` model (8 -> 32), identical on every machine."""
    return random_model(preset(DEMO_PRESET), seed)
