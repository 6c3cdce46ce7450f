"""Paste-back: each aligned sample warped into the upscaled photo through a feathered mask.

The background is the photo upscaled with Lanczos in 8 bits. A face's mask lives in the
sample's own pixels: the sample square eroded by ``ERODE`` of its side, then box-blurred over
``FEATHER`` of its side, which is exactly the product of two linear ramps (a box blur of an
interval is a ramp), so it is computed in closed form at every output pixel and never leaves
the sample. Its slope is ``1 / FEATHER`` per sample pixel, so the blend changes by at most
``max step = 255 / (FEATHER * side)`` per sample pixel across the edge: no seam, and outside
the mask's support the output is the background, byte for byte.

Faces are composited smallest first, so a nearer (larger) face covers a farther one where
their squares overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .align import FaceSquare, warp

FEATHER = 1 / 8   # ramp width, in sample sides
ERODE = 1 / 8     # the ramp's midpoint, this far inside the sample's edge (>= FEATHER / 2: zero at the edge)
UPSCALE_ROWS, UPSCALE_MARGIN = 64, 4  # photo rows per resized band, and the overlap Lanczos (3 px) needs
BLEND_ROWS = 256  # output rows blended at a time: float temporaries stay small for a face of any size


@dataclass(frozen=True)
class Placement:
    """Where one face's samples go in the output photo: the region (rows, columns) they can touch,
    the map from that region's pixels to sample pixels, and the mask over the region."""

    rows: slice
    cols: slice
    to_sample: np.ndarray   # 3x3: region pixel (x, y, 1) -> sample pixel
    mask: np.ndarray        # [h, w, 1] float32 in [0, 1]
    size: int               # the sample's side in pixels


def upscale(photo: np.ndarray, factor: float) -> np.ndarray:
    """The background: ``photo`` (HWC uint8) resized by ``factor`` with Lanczos, still uint8.

    An integer factor is resized a band of rows at a time straight into the output (with a
    margin wider than Lanczos' 3-pixel support, cut away: the bands equal one whole resize,
    byte for byte), so the only large array is the output itself."""
    h, w = photo.shape[:2]
    if float(factor).is_integer() and factor >= 1:
        f = int(factor)
        out = np.empty((h * f, w * f, photo.shape[2]), np.uint8)
        for top in range(0, h, UPSCALE_ROWS):
            bottom = min(top + UPSCALE_ROWS, h)
            a, b = max(top - UPSCALE_MARGIN, 0), min(bottom + UPSCALE_MARGIN, h)
            band = _lanczos(photo[a:b], (w * f, (b - a) * f))
            out[top * f:bottom * f] = band[(top - a) * f:(bottom - a) * f]
        return out
    return np.array(_lanczos(photo, (max(1, round(w * factor)), max(1, round(h * factor)))))  # writable


def _lanczos(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS), dtype=np.uint8)


def place(square: FaceSquare, factor: float, size: int, out_shape: tuple[int, int]) -> Placement | None:
    """The placement of ``size``-pixel samples of the face whose square (in photo pixels) is
    ``square``, in an output ``factor`` times the photo; None when it falls outside."""
    to_output = square.scaled(factor).to_photo(size)
    corners = square.scaled(factor).corners
    h, w = out_shape
    x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 1, [w, h])
    if x1 <= x0 or y1 <= y0:
        return None
    origin = np.eye(3)
    origin[:2, 2] = x0, y0
    to_sample = np.linalg.inv(to_output) @ origin
    return Placement(slice(y0, y1), slice(x0, x1), to_sample, feather_mask(to_sample, (y1 - y0, x1 - x0), size),
                     size)


def feather_mask(to_sample: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """The eroded, box-blurred sample square seen through ``to_sample`` on a ``shape`` grid."""
    ys = np.arange(shape[0], dtype=np.float32)[:, None]
    xs = np.arange(shape[1], dtype=np.float32)[None, :]
    lo, hi, width = -0.5 + ERODE * size, size - 0.5 - ERODE * size, FEATHER * size

    def ramp(row: np.ndarray) -> np.ndarray:  # the blurred interval along one sample axis
        t = (row[0] * xs + row[1] * ys + row[2]).astype(np.float32)
        return np.clip((t - lo) / width + 0.5, 0, 1) * np.clip((hi - t) / width + 0.5, 0, 1)

    return (ramp(to_sample[0]) * ramp(to_sample[1]))[..., None]


def blend(canvas: np.ndarray, placement: Placement, sample: np.ndarray) -> None:
    """Blend ``sample`` (HWC uint8, ``placement.size`` square) into ``canvas`` (HWC uint8) in place."""
    for rows, to_sample, mask in _bands(placement):
        region = canvas[rows, placement.cols]
        mixed = region.astype(np.float32)
        warped = _warp(sample, to_sample, region.shape[1::-1])
        warped -= mixed
        warped *= mask
        mixed += warped  # region + (sample - region) * mask
        region[...] = np.rint(mixed, out=mixed)


def blend_over(canvas: np.ndarray, placement: Placement, sample: np.ndarray) -> None:
    """Composite ``sample`` over ``canvas`` (HWC uint8 RGBA, straight alpha) in place, the mask as
    its alpha: the faces alone, to layer over a background made elsewhere."""
    for rows, to_sample, a in _bands(placement):
        region = canvas[rows, placement.cols]
        warped = _warp(sample, to_sample, region.shape[1::-1])
        below = region[..., 3:] / np.float32(255)
        alpha = a + below * (1 - a)
        rgb = (warped * a + region[..., :3] * below * (1 - a)) / np.maximum(alpha, 1e-6)
        region[..., :3] = np.rint(rgb).astype(np.uint8)
        region[..., 3:] = np.rint(alpha * 255).astype(np.uint8)


def _bands(placement: Placement) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """The placement's region in bands of rows: (canvas rows, band pixel -> sample pixel, mask)."""
    start, stop = placement.rows.start, placement.rows.stop
    for top in range(start, stop, BLEND_ROWS):
        offset = np.eye(3)
        offset[1, 2] = top - start
        yield (slice(top, min(top + BLEND_ROWS, stop)), placement.to_sample @ offset,
               placement.mask[top - start:top - start + BLEND_ROWS])


def _warp(sample: np.ndarray, to_sample: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.clip(warp(sample, to_sample, size, "bicubic"), 0, 255)  # bicubic overshoots


def paste_order(squares: list[FaceSquare]) -> list[int]:
    """Indices of ``squares``, smallest first (the largest is composited last, on top)."""
    return sorted(range(len(squares)), key=lambda j: squares[j].side)
