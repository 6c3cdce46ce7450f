"""CVDVAE: the VD-VAE prior plus an LR encoder, sampled in one pass from explicit noise."""

from __future__ import annotations

import torch
from torch import nn

from .config import CVDVAEConfig
from .decoder import Decoder
from .degradation import bicubic_degradation, project_separable
from .dmol import sample_dmol
from .encoder import Encoder
from .noise_layout import NoiseLayout


def non_finite_count(x: torch.Tensor) -> torch.Tensor:
    """``[N, ...] -> [N]`` float32: how many values of each row are NaN or Inf."""
    bad = torch.isnan(x) | torch.isinf(x)
    return bad.flatten(1).to(torch.float32).sum(dim=1)


def _expand_samples(x: torch.Tensor, n: int) -> torch.Tensor:
    """``[B, ...] -> [B * n, ...]``, image b's rows first: the LR encoder ran once per image."""
    return x[:, None].expand(-1, n, *x.shape[1:]).reshape(-1, *x.shape[1:])


class CVDVAE(nn.Module):
    """State-dict names equal the official ``CVAE`` (``shift``, ``scale``, ``encoder``,
    ``encoder_y``, ``decoder``); a VD-VAE checkpoint is the same without the LR parts.

    ``with_posterior=False`` (inference) leaves out what sampling never uses: the HR
    encoder and the decoder's q(z|x) ``enc`` heads. Training builds them through this
    same class with ``with_posterior=True``.
    """

    def __init__(self, config: CVDVAEConfig, *, with_posterior: bool = False):
        super().__init__()
        self.config = config
        self.with_posterior = with_posterior
        self.noise_layout = NoiseLayout.from_config(config)
        self.register_buffer("shift", torch.full((1, 1, 1), config.shift))
        self.register_buffer("scale", torch.full((1, 1, 1), config.scale))
        if with_posterior:
            self.encoder = Encoder(config.encoder_layers, config.width, config.width_at, config.bottleneck)
        if config.has_lr_encoder:
            self.encoder_y = Encoder(config.encoder_y_layers, config.width_y, config.width_y_at, config.bottleneck)
        self.decoder = Decoder(config, with_enc=with_posterior)
        if config.has_lr_encoder:
            # The bicubic downscale and its pseudo-inverse, as buffers so they follow .to() and
            # tracing; not in the state dict (they are derived from the config).
            degradation = bicubic_degradation(config.image_size, config.scale_factor)
            self.register_buffer("downscale_matrix", torch.tensor(degradation.A, dtype=torch.float32), False)
            self.register_buffer("lift_matrix", torch.tensor(degradation.P_A, dtype=torch.float32), False)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The precision of the weights and of the network's activations."""
        return self.decoder.gain.dtype

    def cast_weights(self, dtype: torch.dtype) -> "CVDVAE":
        """Run the network in ``dtype`` (float16, bfloat16) with float32 islands.

        Only parameters are cast. Inputs, outputs, the normaliser, the latent draws
        (exp of log-stds), the DMOL pixel head (where 1 - 1e-5 must not round to 1) and the
        consistency projection stay float32.
        """
        for param in self.parameters():
            param.data = param.data.to(dtype)
        return self

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """RGB 0..255 -> the encoders' input scale, ``(pixel + shift) * scale``."""
        return ((pixels + self.shift) * self.scale).to(self.compute_dtype)

    def encode_lr(self, lr: torch.Tensor, n: int) -> dict[int, torch.Tensor]:
        """LR activations per resolution, computed once per image and shared by its n samples."""
        return {res: _expand_samples(a, n) for res, a in self.encoder_y(self.normalize(lr)).items()}

    def split_noise(self, noise: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Flat ``[N, D]`` noise -> per-block latent noise and ``[N, M + 3, H, W]`` pixel noise."""
        layout = self.noise_layout
        eps = [noise[:, s.offset:s.offset + s.size].reshape(-1, s.zdim, s.res, s.res) for s in layout.latents]
        size = layout.image_size
        pixel = noise[:, layout.pixel_offset:].reshape(-1, layout.pixel_channels, size, size)
        return eps, pixel

    def forward(self, lr: torch.Tensor | None, noise: torch.Tensor, temperature: torch.Tensor,
                consistent: bool = False) -> torch.Tensor:
        """Samples ``[B, n, 3, H, W]`` in [0, 1] (docs/contract/graph.md).

        ``lr`` [B, 3, h, w] RGB 0..255 (None for a prior-only model), ``noise`` [B, n, D]
        standard normal in the contract's layout, ``temperature`` [B, n] for the prior
        groups. No random number is drawn here. ``consistent`` applies the exact
        projection that makes each sample's bicubic downscale equal ``lr``.
        """
        return self.sample(lr, noise, temperature, consistent)[0]

    def sample(self, lr: torch.Tensor | None, noise: torch.Tensor, temperature: torch.Tensor,
               consistent: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sr, non_finite)``: the samples as ``forward`` gives them, and ``[B, n]`` float32 counts of
        the NaN and Inf values among each sample's pixel-head parameters and samples.

        The parameters are counted before the mixture's argmax and the clamps, which turn NaN
        into numbers on some engines (OpenVINO's CPU plugin among them): a fault anywhere above
        the pixel head reaches them, so the count says a sample is broken whatever its pixels.
        """
        self._check_inputs(lr, noise, temperature)
        batch, n = noise.shape[0], noise.shape[1]
        flat = noise.reshape(-1, noise.shape[2])
        eps, pixel_noise = self.split_noise(flat)
        acts_y = self.encode_lr(lr, n) if lr is not None else None
        log_t = torch.log(temperature.reshape(-1, 1, 1, 1))
        params = self.decoder.sample(eps, log_t, acts_y)
        x = sample_dmol(params, pixel_noise, self.config.num_mixtures)
        sr = ((x + 1.0) * 0.5).reshape(batch, n, *x.shape[1:])
        if consistent:
            sr = self.project_consistent(sr, lr)
        non_finite = non_finite_count(params).reshape(batch, n) + non_finite_count(sr.flatten(0, 1)).reshape(batch, n)
        return sr, non_finite

    def project_consistent(self, sr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """Replace each sample's row-space component so its downscale equals ``lr``, then clamp."""
        a, p = self.downscale_matrix, self.lift_matrix
        projected = project_separable(sr * 255.0, lr[:, None], a, a, p, p) / 255.0
        return projected.clamp(0.0, 1.0)

    def _check_inputs(self, lr: torch.Tensor | None, noise: torch.Tensor, temperature: torch.Tensor) -> None:
        cfg, dim = self.config, self.noise_layout.dim
        if noise.dim() != 3 or noise.shape[2] != dim:
            raise ValueError(f"noise must be [B, n, {dim}], got {list(noise.shape)}")
        if temperature.dim() != 2:
            raise ValueError(f"temperature must be [B, n], got {list(temperature.shape)}")
        if cfg.has_lr_encoder:
            size = cfg.image_size_y
            if lr is None or lr.dim() != 4 or tuple(lr.shape[1:]) != (3, size, size):
                got = None if lr is None else list(lr.shape)
                raise ValueError(f"lr must be [B, 3, {size}, {size}] RGB 0..255, got {got}")
        elif lr is not None:
            raise ValueError("this is a prior-only model: pass lr=None")
