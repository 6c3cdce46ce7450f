"""Output files: one PNG per sample, one grid per input, written atomically.

Names: ``{stem}_s{seed}_{k:02d}.png`` for sample k, ``{stem}_s{seed}_grid.png``, and with a
summary ``{stem}_s{seed}_mean.png`` and ``{stem}_s{seed}_std.png`` (``runtime.images.summary``). Callers
check ``planned`` paths for existing files before any work; nothing here overwrites a file
the caller did not ask to replace.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from cvdvae.fileio import atomic_path

GRID_COLUMNS = 8
PAD = 4


def sample_path(out: Path, stem: str, seed: int, k: int, suffix: str = ".png") -> Path:
    return out / f"{stem}_s{seed}_{k:02d}{suffix}"


def grid_path(out: Path, stem: str, seed: int) -> Path:
    return out / f"{stem}_s{seed}_grid.png"


def summary_paths(out: Path, stem: str, seed: int) -> tuple[Path, Path]:
    """The mean's and the standard deviation map's files."""
    return out / f"{stem}_s{seed}_mean.png", out / f"{stem}_s{seed}_std.png"


def planned(out: Path, stem: str, seed: int, n: int, with_grid: bool, with_summary: bool = False) -> list[Path]:
    paths = [sample_path(out, stem, seed, k) for k in range(n)]
    return (paths + ([grid_path(out, stem, seed)] if with_grid else [])
            + (list(summary_paths(out, stem, seed)) if with_summary else []))


def to_uint8(chw: np.ndarray) -> np.ndarray:
    """[3, H, W] in [0, 1] -> HWC uint8, rounding half to even as the official sampler."""
    return np.round(np.clip(chw, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0)


def nearest_upscale(chw_uint8: np.ndarray, factor: int) -> np.ndarray:
    return chw_uint8.repeat(factor, axis=1).repeat(factor, axis=2).transpose(1, 2, 0)


def input_grid(lr: np.ndarray | None, hr: np.ndarray | None, samples: list[np.ndarray] | np.ndarray,
               scale: int | None, summary: Any = None) -> np.ndarray:
    """One input's grid: its LR image ([3, h, w] 0..255) enlarged ``scale`` times (nearest), its HR
    image ([H, W, 3] uint8) when there is one, then its samples (HWC uint8), and with a
    ``summary`` (``runtime.images.summary``) the mean and the standard deviation map."""
    tiles = [] if lr is None else [nearest_upscale(np.round(lr).astype(np.uint8), scale)]
    extra = [] if summary is None else [summary.mean_pixels(), summary.std_pixels()]
    return grid([*tiles, *([] if hr is None else [hr]), *samples, *extra])


def grid(tiles: list[np.ndarray], columns: int = GRID_COLUMNS, pad: int = PAD) -> np.ndarray:
    """HWC tiles in rows of ``columns``, on white: cells as wide as the tiles and as tall as the
    tallest (a standard deviation map is taller by its scale bar), tiles at their top left."""
    h, w = max(tile.shape[0] for tile in tiles), tiles[0].shape[1]
    cols = min(columns, len(tiles))
    rows = -(-len(tiles) // cols)
    canvas = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        canvas[r * (h + pad):r * (h + pad) + tile.shape[0], c * (w + pad):c * (w + pad) + w] = tile
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
                  skip: frozenset[int] = frozenset(), first: int = 0) -> list[Path]:
    """Sample ``first + k`` of ``samples`` ([n, H, W, 3] uint8) as ``{stem}_s{seed}_{first+k:02d}.png``,
    but for the ``skip`` ones (k), and the grid when given; returns the paths written."""
    written = []
    for k, sample in enumerate(samples):
        if k not in skip:
            written.append(sample_path(out, stem, seed, first + k))
            write_png(written[-1], sample)
    if grid_pixels is not None:
        written.append(grid_path(out, stem, seed))
        write_png(written[-1], grid_pixels)
    return written


def write_summary(out: Path, stem: str, seed: int, summary: Any) -> list[Path]:
    """A ``runtime.images.summary`` summary as ``{stem}_s{seed}_mean.png`` and ``{stem}_s{seed}_std.png``."""
    mean, std = summary_paths(out, stem, seed)
    write_png(mean, summary.mean_pixels())
    write_png(std, summary.std_pixels())
    return [mean, std]
