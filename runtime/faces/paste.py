"""Paste-back: each aligned sample warped into the upscaled photo through a feathered mask.

The background is the photo upscaled with Lanczos in 8 bits; faces are placed through the
same pixel-edge mapping (``canvas_map``), so at any factor a face lands where the photo under
it went. A sample that is enlarged is read bicubic (sharp); one that shrinks is area-averaged
(supersampled, as the crop is), so fine detail never aliases. A face's mask lives in the
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

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from .align import FaceSquare, warp

FEATHER = 1 / 8   # ramp width, in sample sides
ERODE = 1 / 8     # the ramp's midpoint, this far inside the sample's edge (>= FEATHER / 2: zero at the edge)
UPSCALE_ROWS, UPSCALE_MARGIN = 64, 4  # photo rows per resized band, and the overlap Lanczos (3 px) needs
BLEND_ROWS = 128  # output rows blended at a time: temporaries stay small for a face of any size
TWO_STEP, STEP = 4.0, 2  # enlarged 4x or more, a sample is turned at 2x its resolution, then resized (_Source)
_MARGIN = 2              # pixels around the turned sample: the bicubic resize's reach
_WORKERS = os.cpu_count() or 1
_POOL = ThreadPoolExecutor(_WORKERS, thread_name_prefix="cvdvae-paste")


@dataclass(frozen=True)
class Placement:
    """Where one face's samples go in the output photo: the region (rows, columns) they can touch,
    the map from that region's pixels to sample pixels, and how finely each output pixel is
    sampled (``supersample`` x ``supersample`` points, averaged, where the sample shrinks)."""

    rows: slice
    cols: slice
    to_sample: np.ndarray   # 3x3: region pixel (x, y, 1) -> sample pixel
    size: int               # the sample's side in pixels

    @property
    def supersample(self) -> int:
        """Sample pixels one output pixel spans, along its longer direction, rounded up: above 1 the
        sample shrinks, and each output pixel averages that many points a side, so nothing aliases."""
        span = float(np.linalg.norm(self.to_sample[:2, :2], ord=2))
        return max(1, int(np.ceil(span - 1e-9)))


def canvas_map(photo_shape: tuple[int, int], out_shape: tuple[int, int]) -> np.ndarray:
    """3x3: photo pixel (x, y, 1) -> output pixel, for an output of ``out_shape`` (height, width)
    resized from ``photo_shape``: pixel edges scale by out / in on each axis, the mapping the
    background's resize uses (so a face lands where the photo under it went, even when
    ``round(w * f) / w`` is not ``f``). Pixel centres are at integers: X = fx (x + 0.5) - 0.5."""
    fy, fx = out_shape[0] / photo_shape[0], out_shape[1] / photo_shape[1]
    return np.array([[fx, 0, (fx - 1) / 2], [0, fy, (fy - 1) / 2], [0, 0, 1]])


def upscale(photo: np.ndarray, factor: float) -> np.ndarray:
    """The background: ``photo`` (HWC or HW uint8) resized by ``factor`` with Lanczos, still uint8.

    An integer factor is resized a band of rows at a time straight into the output (with a
    margin wider than Lanczos' 3-pixel support, cut away: the bands equal one whole resize,
    byte for byte), so the only large array is the output itself. Bands are resized on every
    core: Pillow lets go of the GIL while it resamples."""
    h, w = photo.shape[:2]
    if float(factor).is_integer() and factor >= 1:
        f = int(factor)
        out = np.empty((h * f, w * f, *photo.shape[2:]), np.uint8)

        def resize_band(top: int) -> None:
            bottom = min(top + UPSCALE_ROWS, h)
            a, b = max(top - UPSCALE_MARGIN, 0), min(bottom + UPSCALE_MARGIN, h)
            band = _lanczos(photo[a:b], (w * f, (b - a) * f))
            out[top * f:bottom * f] = band[(top - a) * f:(bottom - a) * f]

        with ThreadPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(resize_band, range(0, h, UPSCALE_ROWS)))
        return out
    out_h, out_w = output_shape((h, w), factor)
    return np.array(_lanczos(photo, (out_w, out_h)))  # writable


def output_shape(photo_shape: tuple[int, int], factor: float) -> tuple[int, int]:
    """(height, width) of the photo resized by ``factor``: each side rounded, at least 1 px."""
    return max(1, round(photo_shape[0] * factor)), max(1, round(photo_shape[1] * factor))


def _lanczos(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS), dtype=np.uint8)


def place(square: FaceSquare, to_output: np.ndarray, size: int, out_shape: tuple[int, int]) -> Placement | None:
    """The placement of ``size``-pixel samples of the face whose square (in photo pixels) is
    ``square``, in an output reached from the photo by ``to_output`` (``canvas_map``); None when
    it falls outside."""
    sample_to_output = to_output @ square.to_photo(size)
    corners = square.corners @ to_output[:2, :2].T + to_output[:2, 2]
    h, w = out_shape
    x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 1, [w, h])
    if x1 <= x0 or y1 <= y0:
        return None
    origin = np.eye(3)
    origin[:2, 2] = x0, y0
    return Placement(slice(y0, y1), slice(x0, x1), np.linalg.inv(sample_to_output) @ origin, size)


def feather_mask(to_sample: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """The eroded, box-blurred sample square seen through ``to_sample`` on a ``shape`` grid, [h, w, 1]."""
    ys = np.arange(shape[0], dtype=np.float32)[:, None]
    xs = np.arange(shape[1], dtype=np.float32)[None, :]
    lo, hi, width = -0.5 + ERODE * size, size - 0.5 - ERODE * size, FEATHER * size

    def ramp(row: np.ndarray) -> np.ndarray:  # the blurred interval along one sample axis
        t = (row[0] * xs + row[1] * ys + row[2]).astype(np.float32)
        return np.clip((t - lo) / width + 0.5, 0, 1) * np.clip((hi - t) / width + 0.5, 0, 1)

    return (ramp(to_sample[0]) * ramp(to_sample[1]))[..., None]


@dataclass(frozen=True)
class MaskBand:
    """One band of rows of a placement's region, cut to the columns its mask reaches (outside them
    the output is the background: nothing to warp), and the mask over it in 1/255 steps."""

    rows: slice
    cols: slice
    weights: np.ndarray  # [h, w] uint8


def mask_bands(placement: Placement) -> Iterator[MaskBand]:
    """The placement's region in bands of ``BLEND_ROWS`` rows, each made when it is asked for, so
    memory stays a few bands' worth however large the face. Every sample of a face shares them:
    ``list`` them once to paste many."""
    start, stop = placement.rows.start, placement.rows.stop
    width = placement.cols.stop - placement.cols.start
    for top in range(start, stop, BLEND_ROWS):
        rows = slice(top, min(top + BLEND_ROWS, stop))
        offset = np.eye(3)
        offset[1, 2] = top - start
        mask = feather_mask(placement.to_sample @ offset, (rows.stop - rows.start, width), placement.size)[..., 0]
        reached = np.flatnonzero(mask.any(axis=0))
        if reached.size:
            left, right = int(reached[0]), int(reached[-1]) + 1
            weights = np.rint(mask[:, left:right] * 255).astype(np.uint8)
            yield MaskBand(rows, slice(placement.cols.start + left, placement.cols.start + right), weights)


def blend(canvas: np.ndarray, placement: Placement, sample: np.ndarray,
          masks: Iterable[MaskBand] | None = None) -> None:
    """Blend ``sample`` (HWC uint8, ``placement.size`` square) into ``canvas`` (HWC uint8, RGB or
    RGBA: the alpha is the photo's and stays) in place, through ``masks`` (``mask_bands``, made
    here when not given). Bands are blended on every core in Pillow's C code (8-bit, rounded):
    it lets go of the GIL."""
    from PIL import Image

    source = _Source(placement, sample)

    def blend_band(band: MaskBand) -> None:
        region = canvas[band.rows, band.cols, :3]
        mixed = Image.fromarray(np.ascontiguousarray(region))
        mixed.paste(source.band(band), (0, 0), Image.fromarray(band.weights))
        region[...] = np.asarray(mixed)

    _each_band(blend_band, mask_bands(placement) if masks is None else masks)


def blend_over(canvas: np.ndarray, placement: Placement, sample: np.ndarray,
               masks: Iterable[MaskBand] | None = None) -> None:
    """Composite ``sample`` over ``canvas`` (HWC uint8 RGBA, straight alpha) in place, the mask as
    its alpha: the faces alone, to layer over a background made elsewhere."""
    source = _Source(placement, sample)

    def blend_band(band: MaskBand) -> None:
        region = canvas[band.rows, band.cols]
        warped = np.asarray(source.band(band), np.float32)
        a = band.weights[..., None] / np.float32(255)
        below = region[..., 3:] / np.float32(255)
        alpha = a + below * (1 - a)
        rgb = (warped * a + region[..., :3] * below * (1 - a)) / np.maximum(alpha, 1e-6)
        region[..., :3] = np.rint(rgb).astype(np.uint8)
        region[..., 3:] = np.rint(alpha * 255).astype(np.uint8)

    _each_band(blend_band, mask_bands(placement) if masks is None else masks)


def _each_band(work: Callable[[MaskBand], None], bands: Iterable[MaskBand]) -> None:
    """``work`` on each band, on every core, with a few bands in flight (``bands`` may be made lazily)."""
    pending: list = []
    for band in bands:
        pending.append(_POOL.submit(work, band))
        if len(pending) >= 2 * _WORKERS:
            pending.pop(0).result()
    for future in pending:
        future.result()


class _Source:
    """One sample, ready to be read onto any band of its placement's region as 8-bit RGB.

    Enlarged ``TWO_STEP`` times or more, it is read in two steps: turned onto the output's axes
    at ``STEP`` x its own resolution (bicubic, once per sample, small), then enlarged the rest of
    the way band by band with Pillow's separable bicubic resize, which costs a few times less per
    output pixel than a bicubic read through the affine map and rounds where an 8-bit affine read
    truncates. Otherwise each band is read through the map directly (``_warp``)."""

    def __init__(self, placement: Placement, sample: np.ndarray):
        from PIL import Image

        self.placement, self.sample = placement, sample
        span = float(np.linalg.norm(placement.to_sample[:2, :2], ord=2))
        # Turned-sample pixels per output pixel, a multiple of 1 / 1024: a band's coordinates in the
        # turned sample are then exact, so bands of any shape resize to the same pixels.
        self.scale = round(span * STEP * 1024) / 1024
        self.turned = None
        if placement.supersample == 1 and 1 / span >= TWO_STEP:
            rows = placement.rows.stop - placement.rows.start
            cols = placement.cols.stop - placement.cols.start
            k, m = 1 / self.scale, _MARGIN
            to_region = np.array([[k, 0, (0.5 - m) * k - 0.5], [0, k, (0.5 - m) * k - 0.5], [0, 0, 1]])
            size = (int(np.ceil(cols * self.scale)) + 2 * m, int(np.ceil(rows * self.scale)) + 2 * m)
            turned = warp(sample, placement.to_sample @ to_region, size, "bicubic")
            self.turned = Image.fromarray(np.clip(np.rint(turned), 0, 255).astype(np.uint8))

    def band(self, band: MaskBand):
        """The sample over ``band`` (a Pillow RGB image of the band's size)."""
        from PIL import Image

        p = self.placement
        top, left = band.rows.start - p.rows.start, band.cols.start - p.cols.start
        h, w = band.weights.shape
        if self.turned is not None:
            # Across, then down, each its own resize: left to choose, Pillow orders its two passes
            # by cost, so a band's pixels would depend on the band's shape (overshoots clip between).
            s, m = self.scale, _MARGIN
            first, last = top * s + m, (top + h) * s + m
            y0, y1 = max(int(first) - 3, 0), min(int(np.ceil(last)) + 3, self.turned.height)
            across = self.turned.crop((0, y0, self.turned.width, y1)).resize(
                (w, y1 - y0), Image.BICUBIC, box=(left * s + m, 0, (left + w) * s + m, y1 - y0))
            return across.resize((w, h), Image.BICUBIC, box=(0, first - y0, w, last - y0))
        offset = np.eye(3)
        offset[:2, 2] = left, top
        warped = _warp(self.sample, p.to_sample @ offset, (h, w), p.supersample)
        return Image.fromarray(np.clip(np.rint(warped), 0, 255).astype(np.uint8))


def _warp(sample: np.ndarray, to_sample: np.ndarray, shape: tuple[int, int], supersample: int) -> np.ndarray:
    """``sample`` seen through ``to_sample`` on a ``shape`` grid, float32 HWC. Enlarged: bicubic,
    sharp. Shrunk: each output pixel the mean of ``supersample`` x ``supersample`` bilinear
    points spread over its footprint, the area average the crop also takes (a bicubic read
    alone would skip sample pixels: 1 px stripes shrunk to 0.4x would come out 0 or 255)."""
    h, w = shape
    if supersample == 1:
        return np.clip(warp(sample, to_sample, (w, h), "bicubic"), 0, 255)  # bicubic overshoots
    m = supersample
    fine_to_coarse = np.array([[1 / m, 0, (1 / m - 1) / 2], [0, 1 / m, (1 / m - 1) / 2], [0, 0, 1]])
    fine = warp(sample, to_sample @ fine_to_coarse, (w * m, h * m), "bilinear")
    return fine.reshape(h, m, w, m, -1).mean(axis=(1, 3), dtype=np.float32)


def paste_order(squares: list[FaceSquare]) -> list[int]:
    """Indices of ``squares``, smallest first (the largest is composited last, on top)."""
    return sorted(range(len(squares)), key=lambda j: squares[j].side)
