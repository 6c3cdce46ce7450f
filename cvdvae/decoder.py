"""The top-down VD-VAE decoder, with the CVDVAE ``enc_y`` heads for the first ``ky`` blocks."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import Block, conv, depth_scale, upsample_nearest
from .config import CVDVAEConfig
from .dmol import DmolNet


class DecBlock(nn.Module):
    """One latent group: prior head, optional posterior heads, z projection, residual block.

    Sub-modules in the official registration order: ``enc`` (q(z|x), training only),
    ``enc_y`` (q(z|y), blocks below ky), ``prior``, ``z_proj``, ``resnet``.
    """

    def __init__(self, cfg: CVDVAEConfig, res: int, mixin: int | None, *, with_enc: bool, with_enc_y: bool):
        super().__init__()
        self.res, self.mixin, self.zdim = res, mixin, cfg.zdim
        self.width = width = cfg.width_at(res)
        mid, use_3x3, z2 = cfg.bottleneck(width), res > 2, 2 * cfg.zdim
        if with_enc:
            self.enc = Block(2 * width, mid, z2, use_3x3=use_3x3)
        if with_enc_y:
            self.enc_y = Block(2 * width, mid, z2, use_3x3=use_3x3)
        self.prior = Block(width, mid, z2 + width, use_3x3=use_3x3, zero_last=True)
        self.z_proj = conv(cfg.zdim, width, 1)
        self.resnet = Block(width, mid, width, use_3x3=use_3x3, residual=True)
        scale = depth_scale(len(cfg.decoder_layers))
        with torch.no_grad():
            self.z_proj.weight.mul_(scale)
        self.resnet.scale_last(scale)

    def block_input(self, xs: dict[int, torch.Tensor], batch_like: torch.Tensor) -> torch.Tensor:
        """The state at this resolution (zeros if none yet) plus the upsampled mixin."""
        x = xs.get(self.res)
        if self.mixin is not None:
            up = upsample_nearest(xs[self.mixin][:, : self.width], self.res // self.mixin)
            return up if x is None else x + up  # skip adding to zeros: one full-size tensor less
        if x is None:
            x = batch_like.new_zeros((batch_like.shape[0], self.width, self.res, self.res),
                                     dtype=self.z_proj.weight.dtype)
        return x

    def prior_split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prior mean, prior log-std, state update) from the block input."""
        feats = self.prior(x)
        z = self.zdim
        return feats[:, :z], feats[:, z:2 * z], feats[:, 2 * z:]

    def sample(self, xs: dict[int, torch.Tensor], eps: torch.Tensor, log_t: torch.Tensor,
               cond: torch.Tensor | None) -> torch.Tensor:
        """The new state at this resolution.

        With ``cond`` (the LR encoder's activation) z comes from q(z|y), untempered;
        without it from the prior with log-std shifted by log t (t = 0 gives the mean).
        """
        x = self.block_input(xs, eps)
        pm, pv, xpp = self.prior_split(x)
        # The draw is float32 whatever the weights' precision: exp of a log-std overflows
        # float16 long before the network does. (.float() is a no-op in a float32 model.)
        if cond is not None:
            qm, qv = self.enc_y(torch.cat([x, cond], dim=1)).float().chunk(2, dim=1)
            z = torch.exp(qv) * eps + qm
        else:
            z = torch.exp(pv.float() + log_t) * eps + pm.float()
        x = x + xpp
        x = x + self.z_proj(z.to(x.dtype))
        return self.resnet(x)


class Decoder(nn.Module):
    """``gain``/``bias`` (own parameters, so first in the state dict), ``dec_blocks``,
    ``bias_xs`` (one learned initial state per resolution <= no_bias_above) and ``out_net``."""

    def __init__(self, cfg: CVDVAEConfig, *, with_enc: bool):
        super().__init__()
        self.image_size = cfg.image_size
        self.ky = cfg.ky
        self.dec_blocks = nn.ModuleList(
            DecBlock(cfg, res, mixin, with_enc=with_enc, with_enc_y=i < cfg.ky)
            for i, (res, mixin) in enumerate(cfg.decoder_layers)
        )
        self.bias_resolutions = cfg.bias_resolutions
        # After the last block that reads a resolution's state (as its own or as a mixin),
        # that state is dropped: at n = 8 the dead low-resolution states cost ~350 MB.
        last_use: dict[int, int] = {}
        for i, (res, mixin) in enumerate(cfg.decoder_layers):
            for read in (res, mixin):
                if read is not None:
                    last_use[read] = i
        self.drop_after = [[r for r, i in last_use.items() if i == j and r != cfg.image_size]
                           for j in range(len(cfg.decoder_layers))]
        self.bias_xs = nn.ParameterList(
            nn.Parameter(torch.zeros(1, cfg.width_at(r), r, r)) for r in self.bias_resolutions
        )
        self.out_net = DmolNet(cfg.width, cfg.num_mixtures)
        self.gain = nn.Parameter(torch.ones(1, cfg.width, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, cfg.width, 1, 1))

    def initial_states(self, batch: int) -> dict[int, torch.Tensor]:
        return {r: b.expand(batch, -1, -1, -1) for r, b in zip(self.bias_resolutions, self.bias_xs)}

    def sample(self, eps: list[torch.Tensor], log_t: torch.Tensor,
               acts_y: dict[int, torch.Tensor] | None) -> torch.Tensor:
        """Run every block from explicit latent noise; returns float32 DMOL parameters."""
        xs = self.initial_states(eps[0].shape[0])
        for i, block in enumerate(self.dec_blocks):
            cond = acts_y[block.res] if i < self.ky and acts_y is not None else None
            xs[block.res] = block.sample(xs, eps[i], log_t, cond)
            for res in self.drop_after[i]:
                del xs[res]
        return self.out_net(xs[self.image_size] * self.gain + self.bias).float()
