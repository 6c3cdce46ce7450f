"""FFHQ alignment: five landmarks -> the oriented square FFHQ was cropped with -> a crop.

Coordinates are continuous pixel coordinates with the centre of pixel (row r, column c) at
``(x=c, y=r)``, the detector's convention.

The square (Karras et al., FFHQ's ``recreate_aligned_images``, written for 68 landmarks; the
eye centres and the mouth corners are all it reads, so five landmarks give the same square)::

    e = (eye_left + eye_right) / 2                  m = (mouth_left + mouth_right) / 2
    x = (eye_right - eye_left) - rot90(m - e)       rot90(a, b) = (b, -a)... as [-1, 1] * flipud
    x = x / |x| * max(2 |eye_right - eye_left|, 1.8 |m - e|)
    y = flipud(x) * [-1, 1]                         (x turned 90 degrees clockwise in the image)
    c = e + 0.1 (m - e)
    corners c - x - y (top left), c - x + y, c + x + y, c + x - y; side 2 |x|

A crop of ``size`` pixels covers the square exactly: its pixel (i, j) has its centre at
``c + ((j + 0.5) / size * 2 - 1) x + ((i + 0.5) / size * 2 - 1) y`` (so the crop's outer edge is
the square's edge, as FFHQ's QUAD transform of the corners places it). ``FaceSquare.to_photo``
is that affine map; the paste-back inverts it.

Where the square leaves the photo, the photo is mirrored and the mirrored band blurred and
drawn towards the median colour (FFHQ's padding), so the crop has no hard border.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

_BANDS = ThreadPoolExecutor(max_workers=3, thread_name_prefix="cvdvae-warp")  # one per colour band
SHRINK_BELOW = 2.0  # box-shrink the photo first while the square has more than 2x the crop's pixels across


@dataclass(frozen=True)
class FaceSquare:
    """The FFHQ square of one face: centre ``c`` and half-side vectors ``x`` (rightwards in the
    crop) and ``y`` (downwards in the crop), in photo pixels."""

    c: np.ndarray
    x: np.ndarray
    y: np.ndarray

    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray) -> "FaceSquare":
        """``landmarks`` (5, 2): eyes (image left, image right), nose, mouth corners (image left, right)."""
        lm = np.asarray(landmarks, dtype=np.float64)
        eye_left, eye_right, _, mouth_left, mouth_right = lm
        eye_avg = (eye_left + eye_right) / 2
        eye_to_eye = eye_right - eye_left
        eye_to_mouth = (mouth_left + mouth_right) / 2 - eye_avg
        x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
        x = x / np.hypot(*x) * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
        y = np.flipud(x) * [-1, 1]
        return cls(eye_avg + eye_to_mouth * 0.1, x, y)

    @property
    def side(self) -> float:
        """The square's side in photo pixels."""
        return float(np.hypot(*self.x) * 2)

    @property
    def corners(self) -> np.ndarray:
        """(4, 2): top left, bottom left, bottom right, top right (in the crop's orientation)."""
        c, x, y = self.c, self.x, self.y
        return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])

    def to_photo(self, size: int) -> np.ndarray:
        """The 3x3 affine matrix taking crop pixel coordinates (x=j, y=i, 1) of a ``size``-pixel crop
        to photo coordinates."""
        m = np.eye(3)
        m[:2, 0] = 2 * self.x / size
        m[:2, 1] = 2 * self.y / size
        m[:2, 2] = self.c + (1 / size - 1) * (self.x + self.y)
        return m


def crop(photo: np.ndarray, square: FaceSquare, size: int) -> np.ndarray:
    """The aligned ``size`` x ``size`` crop (HWC uint8) of ``photo`` (HWC uint8)."""
    from PIL import Image

    region, square = _padded_region(photo, square)
    shrink = int(np.floor(square.side / size / SHRINK_BELOW))
    if shrink > 1:  # average blocks first, so the warp below never skips photo pixels
        image = Image.fromarray(region).reduce(shrink)
        square = FaceSquare((square.c + 0.5) / shrink - 0.5, square.x / shrink, square.y / shrink)
    else:
        image = Image.fromarray(region)
    supersample = max(1, int(np.ceil(square.side / size)))
    big = size * supersample
    warped = warp(np.asarray(image), square.to_photo(big), (big, big), "bilinear")
    if supersample > 1:
        warped = warped.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    return np.clip(np.rint(warped), 0, 255).astype(np.uint8)


def warp(image: np.ndarray, to_image: np.ndarray, size: tuple[int, int], resample: str) -> np.ndarray:
    """Sample ``image`` (HWC uint8) at ``to_image`` (3x3, output pixel -> image pixel) over an output
    of ``size`` (width, height); float32 HWC, unrounded (PIL's 8-bit warps truncate, a -0.5 bias).
    Bands are warped side by side: Pillow releases the GIL while it resamples."""
    from PIL import Image

    method = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[resample]
    data = pil_affine(to_image)

    def band(c: int) -> np.ndarray:
        flat = Image.fromarray(image[..., c].astype(np.float32), mode="F")
        return np.asarray(flat.transform(size, Image.AFFINE, data, resample=method), dtype=np.float32)

    return np.stack(list(_BANDS.map(band, range(image.shape[2]))), axis=-1)


def pil_affine(m: np.ndarray) -> tuple[float, ...]:
    """PIL's AFFINE data for a map ``m`` between centre-at-integer coordinates: PIL samples at
    output pixel centres (+0.5) and reads the input with centres at +0.5."""
    shift = np.eye(3)
    shift[:2, 2] = 0.5
    unshift = np.eye(3)
    unshift[:2, 2] = -0.5
    pil = shift @ m @ unshift
    return tuple(pil[:2].ravel())


def _padded_region(photo: np.ndarray, square: FaceSquare) -> tuple[np.ndarray, FaceSquare]:
    """The part of ``photo`` under the square plus a border, mirrored and softened where it leaves
    the photo; and the square in the region's coordinates."""
    h, w = photo.shape[:2]
    corners = square.corners
    border = max(int(np.rint(square.side * 0.1)), 3)
    x0, y0 = np.floor(corners.min(axis=0)).astype(int) - border
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + border + 1
    inside = photo[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
    pad = (max(-y0, 0), max(y1 - h, 0), max(-x0, 0), max(x1 - w, 0))  # top, bottom, left, right
    shifted = FaceSquare(square.c - [max(x0, 0), max(y0, 0)], square.x, square.y)
    if inside.size == 0:
        raise ValueError("the face square lies outside the photo")
    if not any(pad):
        return inside, shifted
    grow = max(max(pad), int(np.rint(square.side * 0.3)))  # FFHQ pads at least 30% of the side
    pad = tuple(grow if p else 0 for p in pad)
    region = _mirror_pad(inside, pad)
    shifted = FaceSquare(shifted.c + [pad[2], pad[0]], shifted.x, shifted.y)
    return _soften_padding(region, pad, square.side), shifted


def _mirror_pad(image: np.ndarray, pad: tuple[int, int, int, int]) -> np.ndarray:
    top, bottom, left, right = pad
    return np.pad(image, ((top, bottom), (left, right), (0, 0)), mode="symmetric")


def _soften_padding(region: np.ndarray, pad: tuple[int, int, int, int], side: float) -> np.ndarray:
    """Blur the mirrored bands (and the photo's last third-of-a-band before them, so the seam
    goes) and draw them towards the median colour, more with depth."""
    from PIL import Image, ImageFilter

    h, w = region.shape[:2]
    top, bottom, left, right = pad
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    # Signed depth into the padding: 0 at the photo's edge, 1 at the region's, negative inside.
    depth = np.full((h, w), -np.inf, np.float32)
    for band, coordinate in ((top, ys), (left, xs)):
        if band:
            depth = np.maximum(depth, 1 - coordinate / band)
    for band, coordinate, length in ((bottom, ys, h), (right, xs, w)):
        if band:
            depth = np.maximum(depth, 1 - (length - 1 - coordinate) / band)
    depth = depth[..., None]
    image = region.astype(np.float32)
    blurred = np.asarray(Image.fromarray(region).filter(ImageFilter.GaussianBlur(side * 0.02)), np.float32)
    image += (blurred - image) * np.clip(depth * 3 + 1, 0, 1)
    image += (np.median(image, axis=(0, 1)) - image) * np.clip(depth, 0, 1)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
