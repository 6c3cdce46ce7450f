"""Where each random number of a sample lives in the flat noise vector (docs/contract/noise-and-seeds.md).

Per sample, a vector of length ``D``: first, for each decoder block in order, its
``(zdim, r, r)`` standard-normal latent noise in C order (every block has a slice,
conditioned or not); then the ``(num_mixtures + 3, H, W)`` pixel noise, whose first
``num_mixtures`` channels drive the Gumbel-max mixture choice and whose last three drive
the logistic samples of R, G and B.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import CVDVAEConfig


@dataclass(frozen=True)
class LatentSlice:
    block: int
    offset: int
    zdim: int
    res: int

    @property
    def size(self) -> int:
        return self.zdim * self.res * self.res


@dataclass(frozen=True)
class NoiseLayout:
    latents: tuple[LatentSlice, ...]
    pixel_offset: int
    pixel_channels: int
    image_size: int

    @classmethod
    def from_config(cls, cfg: CVDVAEConfig) -> "NoiseLayout":
        latents, offset = [], 0
        for i, (res, _) in enumerate(cfg.decoder_layers):
            latents.append(LatentSlice(i, offset, cfg.zdim, res))
            offset += latents[-1].size
        return cls(tuple(latents), offset, cfg.num_mixtures + 3, cfg.image_size)

    @property
    def pixel_size(self) -> int:
        return self.pixel_channels * self.image_size * self.image_size

    @property
    def dim(self) -> int:
        """``D``, the noise length per sample."""
        return self.pixel_offset + self.pixel_size

    def block_offsets(self) -> list[int]:
        """Start of each decoder block's slice, then the start of the pixel part."""
        return [s.offset for s in self.latents] + [self.pixel_offset]
