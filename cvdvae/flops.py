"""Convolution work of one sampling pass, counted from the config (multiply-adds).

Counts what the graph computes: the LR encoder once per image; per sample every decoder
block's prior head, z projection and residual block, the ``enc_y`` head below ``ky``,
and the output conv. Bias adds, GELU, pooling and elementwise maths are not counted
(FLOP = 2 x MAC), as in tests/fixtures/cvdvae_compute.py, the independent calculator.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import CVDVAEConfig


def block_macs_per_pixel(cin: int, mid: int, cout: int, use_3x3: bool) -> int:
    k2 = 9 if use_3x3 else 1
    return cin * mid + 2 * mid * mid * k2 + mid * cout


@dataclass(frozen=True)
class SamplingWork:
    encoder_y_macs: int   # per image
    decoder_macs: int     # per sample, out_conv included

    def flops(self, images: int, samples_per_image: int) -> int:
        return 2 * (images * self.encoder_y_macs + images * samples_per_image * self.decoder_macs)

    def flops_per_sample(self, samples_per_image: int) -> float:
        return self.flops(1, samples_per_image) / samples_per_image


def sampling_work(cfg: CVDVAEConfig) -> SamplingWork:
    decoder = 0
    for i, (res, _) in enumerate(cfg.decoder_layers):
        c, u = cfg.width_at(res), res > 2
        m = cfg.bottleneck(c)
        per_pixel = block_macs_per_pixel(c, m, 2 * cfg.zdim + c, u) + cfg.zdim * c + block_macs_per_pixel(c, m, c, u)
        if i < cfg.ky:
            per_pixel += block_macs_per_pixel(2 * c, m, 2 * cfg.zdim, u)
        decoder += per_pixel * res * res
    decoder += cfg.width * cfg.num_mixtures * 10 * cfg.image_size ** 2
    encoder = 0
    if cfg.has_lr_encoder:
        size = cfg.image_size_y
        encoder = 3 * cfg.width_y * 9 * size * size
        for res, _ in cfg.encoder_y_layers:
            w = cfg.width_y_at(res)
            encoder += block_macs_per_pixel(w, cfg.bottleneck(w), w, res > 2) * res * res
    return SamplingWork(encoder, decoder)
