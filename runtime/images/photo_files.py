"""Whole photos encoded and written: each unchanged band encoded once, the files written on a thread.

``PhotoEncoder`` encodes photos that equal one background outside a few rows (the n whole
photos of a face run): PNG and JPEG reuse the background's band bytes (``runtime.images.bands``),
WebP is encoded whole. ``FileWriter`` writes finished files on its own thread while the next
photo is pasted and encoded; at most ``QUEUED_FILES`` wait, and each holds only its new bands'
bytes (the reused ones are shared).
"""

from __future__ import annotations

import io
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cvdvae.fileio import atomic_path

from .bands import BandCodec, ReusedBackground, srgb_profile
from .photo_format import PhotoFormat, check_webp_size, png_level

QUEUED_FILES = 2
Pixels = Callable[[np.ndarray, slice], np.ndarray]  # a frame's rows -> the output's pixels of those rows


class PhotoEncoder:
    """Encodes ``fmt`` (decided: ``PhotoFormat.chosen``) photos equal to ``background`` outside the
    row slices ``changing``; ``pixels(frame, rows)`` makes a frame's rows into the file's pixels."""

    def __init__(self, fmt: PhotoFormat, background: np.ndarray, changing: Sequence[slice], pixels: Pixels,
                 pool: ThreadPoolExecutor):
        height, width = background.shape[:2]
        self.format, self.pixels, self.height = fmt, pixels, height
        self.reused: ReusedBackground | None = None
        if fmt.name == "webp":
            check_webp_size(height, width)
            return
        channels = pixels(background, slice(0, 1)).reshape(1, width, -1).shape[2]
        codec = BandCodec(fmt.name, height, width, channels, level=png_level(height, width),
                          quality=fmt.quality or 0)
        self.reused = ReusedBackground(codec, background, changing, pixels, pool)

    def encode(self, frame: np.ndarray) -> list[bytes]:
        """``frame``'s file, as pieces to write one after another."""
        if self.reused is not None:
            return self.reused.encode(frame)
        from PIL import Image

        out = io.BytesIO()
        Image.fromarray(self.pixels(frame, slice(0, self.height))).save(
            out, "WEBP", quality=self.format.quality, icc_profile=srgb_profile())
        return [out.getvalue()]


def output_pixels(grey: bool, keep_alpha: bool) -> Pixels:
    """A composite canvas's rows as a file's pixels: made grey (ITU-R 601 luma, as Pillow's
    ``convert("L")``) for a grey photo, its alpha kept or left out."""
    def pixels(frame: np.ndarray, rows: slice) -> np.ndarray:
        band = frame[rows]
        alpha = band.shape[2] == 4 and keep_alpha
        if not grey:
            return band if alpha or band.shape[2] == 3 else band[..., :3]
        grey_band = luma(band[..., :3])[..., None]
        return np.concatenate([grey_band, band[..., 3:]], axis=2) if alpha else grey_band
    return pixels


def luma(rgb: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"))


class FileWriter:
    """Writes files (each atomically) on one thread, at most ``QUEUED_FILES`` waiting. ``close``
    waits for the last and raises the first error met (the files not yet written are then skipped)."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUED_FILES)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="cvdvae-photo-writer", daemon=True)
        self.thread.start()

    def write(self, path: Path, pieces: list[bytes]) -> None:
        if self.error is not None:
            self.close()
        self.queue.put((path, pieces))

    def close(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    _write(*item)
                except BaseException as err:  # noqa: BLE001 - raised in the caller's thread by close
                    self.error = err


def _write(path: Path, pieces: list[bytes]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.writelines(pieces)
