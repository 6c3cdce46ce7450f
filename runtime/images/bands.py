"""Whole photos encoded a band of rows at a time, each band independent of every other, so a band
that is the same in every photo is encoded once and its bytes are reused.

The n whole photos of a face run differ only in the rows the faces touch. Both formats let a
file be cut into independent row bands:

- PNG: each band is deflated on its own (raw deflate ending in a full flush, one IDAT chunk)
  and its first row is filtered None (the others Up), so it refers to no row above it. The
  zlib stream is a header, the bands' deflate data and an empty final block, and its Adler-32
  is combined from the bands' own (``adler32_combine``, as zlib's).
- JPEG: a restart marker after every MCU row (Pillow's ``restart_marker_rows=1``) resets the
  DC prediction, so the entropy-coded data of an MCU row depends on its own pixels only; a
  band of ``BAND_ROWS`` rows (a multiple of every MCU height) encoded as an image of its own
  gives the same segments as the whole photo encoded at once. The file is the header (the
  first band's, its height set to the photo's), the segments with the restart markers
  RST0..RST7 counted through the whole photo, and EOI: byte for byte Pillow's own encoding.

Files are tagged sRGB (the decoder converts every photo to sRGB) and carry no EXIF, so their
orientation is 1: pixels are stored upright.
"""

from __future__ import annotations

import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

BAND_ROWS = 64                # rows per band: a multiple of 16, the tallest JPEG MCU
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type: grey, grey + alpha, RGB, RGBA
SRGB_PERCEPTUAL = b"\x00"     # the sRGB chunk's rendering intent
ZLIB_HEADER = b"\x78\x01"     # deflate, 32 KiB window; the level field is advisory only
FINAL_EMPTY_BLOCK = b"\x03\x00"  # an empty final block of fixed Huffman codes: ends the deflate stream
ADLER_BASE = 65521
JPEG_SUBSAMPLING = "4:2:0"
RST0, EOI, SOS = 0xD0, 0xD9, 0xDA
SOF_MARKERS = (0xC0, 0xC1, 0xC2)
ICC_DATE = struct.pack(">6H", 2026, 1, 1, 0, 0, 0)  # the embedded sRGB profile's creation date, fixed

Band = tuple  # a band encoded. PNG: (IDAT chunk, Adler-32 of its filtered rows, their length); JPEG: its segments


@dataclass(frozen=True)
class BandCodec:
    """Encodes an ``height`` x ``width`` photo band by band: ``band(rows)`` for each band, then
    ``file(bands)`` gives the file's pieces in order."""

    format: str               # "png" or "jpeg"
    height: int
    width: int
    channels: int             # of the pixels given to ``band``: 1 to 4 for PNG, 1 or 3 for JPEG
    level: int = 6            # PNG: zlib level
    quality: int = 95         # JPEG

    @property
    def count(self) -> int:
        return -(-self.height // BAND_ROWS)

    def rows(self, index: int) -> slice:
        return slice(index * BAND_ROWS, min((index + 1) * BAND_ROWS, self.height))

    def band(self, pixels: np.ndarray) -> Band:
        """One band's pieces: ``pixels`` [rows, width(, channels)] uint8, the photo's rows ``rows(i)``."""
        pixels = pixels.reshape(len(pixels), self.width, self.channels)
        return _png_band(pixels, self.level) if self.format == "png" else _jpeg_segments(pixels, self.quality)

    def file(self, bands: Sequence[Band]) -> list[bytes]:
        """The whole file as pieces (written one after another, never joined)."""
        return self._png_file(bands) if self.format == "png" else self._jpeg_file(bands)

    def _png_file(self, bands: Sequence[Band]) -> list[bytes]:
        header = (PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", self.width, self.height, 8,
                                                              PNG_COLOUR_TYPES[self.channels], 0, 0, 0))
                  + _chunk(b"sRGB", SRGB_PERCEPTUAL) + _chunk(b"IDAT", ZLIB_HEADER))
        adler = 1
        for _, band_adler, length in bands:
            adler = adler32_combine(adler, band_adler, length)
        trailer = _chunk(b"IDAT", FINAL_EMPTY_BLOCK + struct.pack(">I", adler)) + _chunk(b"IEND", b"")
        return [header, *(band[0] for band in bands), trailer]

    def _jpeg_file(self, bands: Sequence[Band]) -> list[bytes]:
        pieces = [_jpeg_header(self.width, self.height, self.channels, self.quality)]
        segments = [segment for band in bands for segment in band]
        for index, segment in enumerate(segments):
            pieces.append(segment)
            pieces.append(bytes((0xFF, RST0 + index % 8)) if index < len(segments) - 1 else bytes((0xFF, EOI)))
        return pieces


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def adler32_combine(adler1: int, adler2: int, length2: int) -> int:
    """The Adler-32 of two byte strings joined, from each one's and the second one's length (zlib's
    ``adler32_combine``, which Python's zlib does not expose)."""
    remainder = length2 % ADLER_BASE
    sum1 = adler1 & 0xFFFF
    sum2 = remainder * sum1 % ADLER_BASE
    sum1 = (sum1 + (adler2 & 0xFFFF) + ADLER_BASE - 1) % ADLER_BASE
    sum2 = (sum2 + (adler1 >> 16) + (adler2 >> 16) + ADLER_BASE - remainder) % ADLER_BASE
    return sum1 | sum2 << 16


def _png_band(pixels: np.ndarray, level: int) -> Band:
    rows = pixels.reshape(len(pixels), -1)
    lines = np.empty((len(rows), 1 + rows.shape[1]), np.uint8)
    lines[0, 0] = 0  # filter None: the band refers to no row above it
    lines[0, 1:] = rows[0]
    lines[1:, 0] = 2  # filter Up: each row minus the one above, mod 256
    np.subtract(rows[1:], rows[:-1], out=lines[1:, 1:])
    deflate = zlib.compressobj(level, zlib.DEFLATED, -15)  # raw deflate: the zlib header is the file's
    data = deflate.compress(lines.data) + deflate.flush(zlib.Z_FULL_FLUSH)
    return _chunk(b"IDAT", data), zlib.adler32(lines.data), lines.size


def _jpeg_encode(pixels: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    image.save(out, "JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING, restart_marker_rows=1,
               icc_profile=srgb_profile())
    return out.getvalue()


def _jpeg_segments(pixels: np.ndarray, quality: int) -> Band:
    return split_jpeg(_jpeg_encode(pixels, quality))[1]


@lru_cache(maxsize=8)
def _jpeg_header(width: int, height: int, channels: int, quality: int) -> bytes:
    """The header (through SOS) of a ``width`` x ``height`` JPEG: a one-row encoding's, its height set."""
    header = bytearray(split_jpeg(_jpeg_encode(np.zeros((1, width, channels), np.uint8), quality))[0])
    at = 2
    while header[at + 1] not in SOF_MARKERS:
        at += 2 + int.from_bytes(header[at + 2:at + 4], "big")
    header[at + 5:at + 7] = height.to_bytes(2, "big")  # SOF: marker, length, precision, then height
    return bytes(header)


def split_jpeg(data: bytes) -> tuple[bytes, Band]:
    """A baseline JPEG's header (through SOS) and its entropy-coded segments (between restart markers)."""
    at = 2
    while data[at + 1] != SOS:
        at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
    start = at + 2 + int.from_bytes(data[at + 2:at + 4], "big")
    segments, begin, at = [], start, start
    while True:
        at = data.index(b"\xff", at)
        marker = data[at + 1]
        if marker in (0x00, 0xFF):  # a stuffed 0xFF byte, or fill before a marker
            at += 1 if marker == 0xFF else 2
        elif RST0 <= marker <= RST0 + 7 or marker == EOI:
            segments.append(data[begin:at])
            if marker == EOI:
                return data[:start], tuple(segments)
            begin = at = at + 2
        else:
            raise ValueError(f"unexpected JPEG marker 0xFF{marker:02X} in the scan")


@lru_cache(maxsize=1)
def srgb_profile() -> bytes:
    """An sRGB ICC profile (littlecms' built-in), embedded in JPEG and WebP whole photos."""
    from PIL import ImageCms

    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    profile[24:36] = ICC_DATE  # littlecms stamps the time it was made: the same photo gives the same bytes
    return bytes(profile)


class ReusedBackground:
    """Photos that equal ``background`` outside ``changing`` (row slices), each encoded with the
    bytes of its unchanged bands made once. ``pixels(frame, rows)`` gives the output pixels of a
    frame's rows (a grey photo's converted, JPEG's alpha left out); bands are encoded on
    ``pool``'s threads (zlib and libjpeg let go of the GIL)."""

    def __init__(self, codec: BandCodec, background: np.ndarray, changing: Sequence[slice],
                 pixels: Callable[[np.ndarray, slice], np.ndarray], pool: ThreadPoolExecutor):
        self.codec, self.pixels, self.pool = codec, pixels, pool
        touched = {i for rows in changing for i in range(rows.start // BAND_ROWS, -(-rows.stop // BAND_ROWS))}
        self.changing = sorted(touched)
        kept = [i for i in range(codec.count) if i not in touched]
        self.kept = dict(zip(kept, pool.map(lambda i: codec.band(pixels(background, codec.rows(i))), kept)))

    def encode(self, frame: np.ndarray) -> list[bytes]:
        """``frame``'s file as pieces: its changing bands encoded now, the others reused."""
        fresh = dict(zip(self.changing, self.pool.map(
            lambda i: self.codec.band(self.pixels(frame, self.codec.rows(i))), self.changing)))
        return self.codec.file([self.kept[i] if i in self.kept else fresh[i] for i in range(self.codec.count)])

