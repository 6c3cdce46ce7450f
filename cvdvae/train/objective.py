"""The CVDVAE training objective: KL(q(z|x) || q(z|y)) over the first ``ky`` groups."""

from __future__ import annotations

import torch
from torch import nn

from ..model import CVDVAE


def gaussian_kl(mu1: torch.Tensor, logsigma1: torch.Tensor, mu2: torch.Tensor, logsigma2: torch.Tensor
                ) -> torch.Tensor:
    """Elementwise KL(N(mu1, e^logsigma1) || N(mu2, e^logsigma2)), the official formula."""
    return -0.5 + logsigma2 - logsigma1 + 0.5 * (torch.exp(2 * logsigma1) + (mu1 - mu2) ** 2) / torch.exp(2 * logsigma2)


def trainable_parameters(model: CVDVAE) -> list[tuple[str, nn.Parameter]]:
    """``encoder_y.*`` and ``*.enc_y.*``: everything else belongs to the frozen VD-VAE."""
    return [(n, p) for n, p in model.named_parameters() if n.startswith("encoder_y.") or ".enc_y." in n]


def freeze_prior(model: CVDVAE) -> None:
    trainable = {n for n, _ in trainable_parameters(model)}
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)


class PosteriorKL(nn.Module):
    """``forward(hr, lr) -> per-group KL [ky, N]`` (each group averaged over C, H, W).

    The state path (HR encoder, prior heads, z ~ q(z|x), residual blocks) depends only on
    frozen modules, so it runs without autograd; gradients reach ``enc_y`` through its own
    term and ``encoder_y`` through every term. The loss is the per-group KLs summed over
    groups and averaged over the batch (``loss``).
    """

    def __init__(self, model: CVDVAE):
        super().__init__()
        if not model.with_posterior or not model.config.has_lr_encoder:
            raise ValueError("training needs the model built with_posterior=True and an LR encoder")
        self.model = model

    def forward(self, hr: torch.Tensor, lr: torch.Tensor, generator: torch.Generator | None = None
                ) -> torch.Tensor:
        model, decoder = self.model, self.model.decoder
        with torch.no_grad():
            acts_x = model.encoder(model.normalize(hr))
            xs = decoder.initial_states(hr.shape[0])
        acts_y = model.encoder_y(model.normalize(lr))
        terms = []
        for block in decoder.dec_blocks[: model.config.ky]:
            act_x, act_y = acts_x[block.res], acts_y[block.res]
            with torch.no_grad():
                x = block.block_input(xs, act_x)
                _, _, xpp = block.prior_split(x)
                qx_mean, qx_logsigma = block.enc(torch.cat([x, act_x], dim=1)).float().chunk(2, dim=1)
                eps = torch.randn(qx_mean.shape, generator=generator, device=qx_mean.device)
                z = torch.exp(qx_logsigma) * eps + qx_mean
                xs[block.res] = block.resnet(x + xpp + block.z_proj(z.to(x.dtype)))
            qy_mean, qy_logsigma = block.enc_y(torch.cat([x, act_y], dim=1)).float().chunk(2, dim=1)
            terms.append(gaussian_kl(qx_mean, qx_logsigma, qy_mean, qy_logsigma).mean(dim=(1, 2, 3)))
        return torch.stack(terms)

    @staticmethod
    def loss(per_group: torch.Tensor) -> torch.Tensor:
        return per_group.sum(dim=0).mean()
