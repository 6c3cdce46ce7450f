"""The demo: several plausible 4x super-resolutions of one low-resolution image.

Runs the built-in untrained ``tiny-x4`` model (8 -> 32), so the samples are textures,
not faces: it shows the pipeline (MATLAB bicubic degradation, one network pass per
sample, seeded noise) on any machine. The grid's second row is the same samples after
the exact LR-consistency projection, which makes each one downscale to the LR input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .atomic import atomic_path
from .cli import add_common_options, run_command
from .degradation import bicubic_degradation
from .errors import CVDVAEError
from .random_weights import demo_model
from .seeding import noise_torch


def synthetic_face(size: int) -> torch.Tensor:
    """A smooth face-like drawing ``[3, size, size]`` in 0..255 (no image files needed)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    face = ((xx / 0.7) ** 2 + (yy / 0.9) ** 2 < 1).float()
    eyes = (((xx.abs() - 0.3) / 0.12) ** 2 + ((yy + 0.2) / 0.1) ** 2 < 1).float()
    mouth = (((xx / 0.35) ** 2 + ((yy - 0.45) / 0.08) ** 2) < 1).float()
    skin, background = torch.tensor([224.0, 172.0, 140.0]), torch.tensor([60.0, 90.0, 140.0])
    img = background[:, None, None] * (1 - face) + skin[:, None, None] * face
    img = img * (1 - 0.7 * eyes) * (1 - 0.5 * mouth)
    return img.clamp(0, 255)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` in [0, 1] -> HWC uint8, rounding half to even as the official sampler."""
    return torch.round(img.clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()


def grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) - pad, cols * (w + pad) - pad, 3), 255, np.uint8)
    for r, images in enumerate(rows):
        for c, img in enumerate(images):
            out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = img
    return out


def save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def run_demo(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise CVDVAEError("--n must be at least 1")
    out: Path = args.out
    grid_path = out / f"demo_s{args.seed}_grid.png"
    if grid_path.exists() and not args.overwrite:
        raise CVDVAEError(f"{grid_path} exists; pass --overwrite to replace it")
    model = demo_model()
    cfg = model.config
    hr = synthetic_face(cfg.image_size)
    lr = bicubic_degradation(cfg.image_size, cfg.scale_factor).downscale_uint8(hr)[None]
    noise = noise_torch(args.seed, args.n, model.noise_layout.dim)[None]
    temperature = torch.full((1, args.n), args.temperature)
    with torch.inference_mode():
        rows = [model(lr, noise, temperature, consistent=c)[0] for c in (False, True)]
    lr_big = lr[0].repeat_interleave(cfg.scale_factor, 1).repeat_interleave(cfg.scale_factor, 2) / 255

    def tile(img: torch.Tensor) -> np.ndarray:
        return to_uint8(img).repeat(args.zoom, 0).repeat(args.zoom, 1)

    out.mkdir(parents=True, exist_ok=True)
    save_png(grid_path, grid([[tile(t) for t in (lr_big, *samples, hr / 255)] for samples in rows]))
    print(f"wrote {grid_path}: LR (nearest) | {args.n} samples (seed {args.seed}, t={args.temperature}) | HR; "
          f"second row LR-consistent; untrained demo model {cfg.image_size_y}->{cfg.image_size}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cvdvae.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder")
    p.add_argument("--n", type=int, default=4, help="samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--zoom", type=int, default=4, help="nearest-neighbour zoom of the grid, for viewing")
    p.add_argument("--overwrite", action="store_true")
    add_common_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(run_demo, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
