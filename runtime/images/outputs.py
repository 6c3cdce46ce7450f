"""Output files: one PNG per sample, one grid per input, written atomically.

Names: ``{stem}_s{seed}_{k:02d}.png`` for sample k and ``{stem}_s{seed}_grid.png``. Callers
check ``planned`` paths for existing files before any work; nothing here overwrites a file
the caller did not ask to replace.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from cvdvae.fileio import atomic_path

GRID_COLUMNS = 8
PAD = 4


def sample_path(out: Path, stem: str, seed: int, k: int) -> Path:
    return out / f"{stem}_s{seed}_{k:02d}.png"


def grid_path(out: Path, stem: str, seed: int) -> Path:
    return out / f"{stem}_s{seed}_grid.png"


def planned(out: Path, stem: str, seed: int, n: int, with_grid: bool) -> list[Path]:
    paths = [sample_path(out, stem, seed, k) for k in range(n)]
    return paths + ([grid_path(out, stem, seed)] if with_grid else [])


def to_uint8(chw: np.ndarray) -> np.ndarray:
    """[3, H, W] in [0, 1] -> HWC uint8, rounding half to even as the official sampler."""
    return np.round(np.clip(chw, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0)


def nearest_upscale(chw_uint8: np.ndarray, factor: int) -> np.ndarray:
    return chw_uint8.repeat(factor, axis=1).repeat(factor, axis=2).transpose(1, 2, 0)


def input_grid(lr: np.ndarray | None, hr: np.ndarray | None, samples: list[np.ndarray] | np.ndarray,
               scale: int | None) -> np.ndarray:
    """One input's grid: its LR image ([3, h, w] 0..255) enlarged ``scale`` times (nearest), its HR
    image ([H, W, 3] uint8) when there is one, then its samples (HWC uint8)."""
    tiles = [] if lr is None else [nearest_upscale(np.round(lr).astype(np.uint8), scale)]
    return grid([*tiles, *([] if hr is None else [hr]), *samples])


def grid(tiles: list[np.ndarray], columns: int = GRID_COLUMNS, pad: int = PAD) -> np.ndarray:
    """HWC tiles of one size in rows of ``columns``, on white."""
    h, w = tiles[0].shape[:2]
    cols = min(columns, len(tiles))
    rows = -(-len(tiles) // cols)
    canvas = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        canvas[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = tile
    return canvas


def png_bytes(hwc: np.ndarray) -> bytes:
    """A sample or a grid as PNG bytes (Pillow's encoder: its adaptive filters make small files)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(hwc).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: Path, hwc: np.ndarray) -> None:
    """``png_bytes`` as a file, written atomically: what ``cvdvae serve`` returns is the same bytes."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(png_bytes(hwc))


def write_samples(out: Path, stem: str, seed: int, samples: np.ndarray, grid_pixels: np.ndarray | None,
                  skip: frozenset[int] = frozenset()) -> list[Path]:
    """Sample k of ``samples`` ([n, H, W, 3] uint8) as ``{stem}_s{seed}_{k:02d}.png``, but for the
    ``skip`` ones, and the grid when given; returns the paths written."""
    written = []
    for k, sample in enumerate(samples):
        if k not in skip:
            written.append(sample_path(out, stem, seed, k))
            write_png(written[-1], sample)
    if grid_pixels is not None:
        written.append(grid_path(out, stem, seed))
        write_png(written[-1], grid_pixels)
    return written
