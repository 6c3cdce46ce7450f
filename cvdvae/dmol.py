"""The discretised mixture of logistics (DMOL) pixel head, sampled from explicit noise.

The official sampler draws two uniform tensors inside the network; here they come from
the pixel part of the noise vector, each standard-normal value ``g`` becoming
``u = clamp(Phi(g), 1e-5, 1 - 1e-5)``. These maths must stay in float32: ``1 - 1e-5``
is 1.0 in float16, which would turn ``log(1 - u)`` into ``-inf``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import conv

U_MIN = 1e-5
LOG_SCALE_MIN = -7.0


def normal_to_uniform(g: torch.Tensor) -> torch.Tensor:
    """Standard normal -> uniform on [1e-5, 1 - 1e-5] through the normal CDF."""
    u = 0.5 * (1.0 + torch.erf(g * (1.0 / math.sqrt(2.0))))
    return u.clamp(U_MIN, 1.0 - U_MIN)


class DmolNet(nn.Module):
    """``out_conv``: state -> ``num_mixtures * 10`` channels of mixture parameters."""

    def __init__(self, width: int, num_mixtures: int):
        super().__init__()
        self.num_mixtures = num_mixtures
        self.out_conv = conv(width, num_mixtures * 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_conv(x)


def mixture_scores(params: torch.Tensor, pixel_noise: torch.Tensor, num_mixtures: int) -> torch.Tensor:
    """Gumbel-perturbed mixture logits ``[N, M, H, W]``: the largest one is chosen."""
    m = num_mixtures
    gumbel = -torch.log(-torch.log(normal_to_uniform(pixel_noise[:, :m])))
    return params[:, :m] + gumbel


def mixture_choice(params: torch.Tensor, pixel_noise: torch.Tensor, num_mixtures: int) -> torch.Tensor:
    """Gumbel-max choice of a mixture per pixel, ``[N, 1, H, W]`` int64."""
    return torch.argmax(mixture_scores(params, pixel_noise, num_mixtures), dim=1, keepdim=True)


def mixture_margin(params: torch.Tensor, pixel_noise: torch.Tensor, num_mixtures: int) -> torch.Tensor:
    """How far each pixel's choice is from flipping, ``[N, H, W]``: best minus second-best score
    (infinite with one mixture). Two implementations can only disagree where this is tiny."""
    if num_mixtures < 2:
        return torch.full_like(params[:, 0], float("inf"))
    top = torch.topk(mixture_scores(params, pixel_noise, num_mixtures), 2, dim=1).values
    return top[:, 0] - top[:, 1]


def sample_dmol(params: torch.Tensor, pixel_noise: torch.Tensor, num_mixtures: int) -> torch.Tensor:
    """One RGB sample in [-1, 1] per pixel, ``[N, 3, H, W]``.

    ``params`` [N, 10M, H, W]: channels 0..M-1 are the mixture logits; channel
    ``M + 3M*c + p*M + k`` holds parameter p (mean, log-scale, raw coefficient) of
    mixture k for colour c. ``pixel_noise`` [N, M + 3, H, W]: Gumbel noise for the
    mixture choice, then logistic noise for R, G, B.
    """
    n, _, h, w = params.shape
    m = num_mixtures
    choice = mixture_choice(params, pixel_noise, m)
    logistic_u = normal_to_uniform(pixel_noise[:, m:])
    # Gathering the chosen mixture equals the official one-hot multiply-sum for finite values.
    per_colour = params[:, m:].reshape(n, 3, 3 * m, h, w)
    index = choice[:, None].expand(-1, 3, -1, -1, -1)

    def chosen(p: int) -> torch.Tensor:
        return torch.gather(per_colour[:, :, p * m:(p + 1) * m], 2, index).squeeze(2)

    mean, log_scale, coeff = chosen(0), chosen(1).clamp_min(LOG_SCALE_MIN), torch.tanh(chosen(2))
    v = mean + torch.exp(log_scale) * (torch.log(logistic_u) - torch.log(1.0 - logistic_u))

    # Colour coupling uses the already clamped previous channels.
    r = v[:, 0].clamp(-1.0, 1.0)
    g = (v[:, 1] + coeff[:, 0] * r).clamp(-1.0, 1.0)
    b = (v[:, 2] + coeff[:, 1] * r + coeff[:, 2] * g).clamp(-1.0, 1.0)
    return torch.stack([r, g, b], dim=1)
