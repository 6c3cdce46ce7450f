"""A PNG encoder that streams rows: a whole-photo output is never copied to be encoded.

Pillow copies an array into its own 4-bytes-per-pixel image before encoding (768 MB for a
192-megapixel RGB photo, on top of the 576 MB array). Here rows are filtered ("Up": each row
minus the one above, mod 256) and deflated a block at a time, so encoding needs a few MB.
Files are written atomically; ``encode_png`` gives the bytes (``cvdvae serve``).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from cvdvae.fileio import atomic_path

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type: grey, grey + alpha, RGB, RGBA
SRGB_PERCEPTUAL = b"\x00"  # the sRGB chunk's rendering intent: the pixels are sRGB (see png_chunks)
FILTER_UP = 2
ROWS_PER_BLOCK = 64


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_chunks(hwc: np.ndarray, level: int = 6) -> Iterator[bytes]:
    """``hwc`` (H, W[, 1 to 4], uint8: grey, grey + alpha, RGB, RGBA) as an 8-bit PNG at zlib
    ``level``, a piece at a time, tagged sRGB: every photo is converted to sRGB when read (its
    own profile applied), so that is what its pixels are; saying so keeps viewers from guessing."""
    if hwc.ndim == 2:
        hwc = hwc[..., None]
    height, width, channels = hwc.shape
    yield (SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, COLOUR_TYPES[channels], 0, 0, 0))
           + _chunk(b"sRGB", SRGB_PERCEPTUAL))
    deflate = zlib.compressobj(level)
    above = np.zeros((1, width * channels), np.uint8)
    for top in range(0, height, ROWS_PER_BLOCK):
        rows = hwc[top:top + ROWS_PER_BLOCK].reshape(-1, width * channels)
        lines = np.empty((len(rows), 1 + width * channels), np.uint8)
        lines[:, 0] = FILTER_UP
        np.subtract(rows, np.concatenate([above, rows[:-1]]), out=lines[:, 1:])  # uint8 wraps: mod 256
        above = rows[-1:]
        data = deflate.compress(lines.data)
        if data:
            yield _chunk(b"IDAT", data)
    yield _chunk(b"IDAT", deflate.flush()) + _chunk(b"IEND", b"")


def write_png_streamed(path: Path, hwc: np.ndarray, level: int = 6) -> None:
    """``hwc`` as a PNG file (``png_chunks``), written atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for piece in png_chunks(hwc, level):
            f.write(piece)


def encode_png(hwc: np.ndarray, level: int = 6) -> bytes:
    """``hwc`` as PNG bytes (``png_chunks``): the encoded size only, never a copy of the pixels."""
    return b"".join(png_chunks(hwc, level))
