"""The spread of n samples: their pixel-wise mean and per-pixel standard deviation.

The mean of the samples is an MMSE-like estimate (it scores a higher PSNR against the truth
than a single sample); the standard deviation is an uncertainty map: where the LR image pins
the face down the samples agree, where it leaves it open they differ.

Both are computed as the samples stream past, from sums of the 8-bit values and of their
squares in int64: every such sum is a whole number, so they are exact (to ``MAX_COUNT``
samples), and the variance ``(n S2 - S1^2) / n^2`` is exact before its one float division.
Memory is 16 bytes per pixel value whatever n. The standard deviation is the population one
(over the n samples, ddof 0), and for a colour image the root mean square of the three
channels' (``sqrt(mean_c var_c)``), in 8-bit levels; an alpha channel is averaged but has no
part in the spread.

The pictures: the mean rounded half to even to 8 bits (as samples are), and the standard
deviation through viridis from 0 to its largest value (at least ``MIN_TOP``) with a scale bar
(``runtime.images.colormap``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .colormap import ScaleBar, colourise, map_with_scale

MAX_COUNT = 10_000_000  # n * S2 stays below 2^63
MIN_TOP = 1.0            # a map of nearly identical samples spans 0..1 level, not their rounding noise stretched
UNIT = "levels"


def colour_channels(channels: int) -> int:
    """How many of an image's channels are colour: grey (1), grey + alpha (2), RGB (3), RGBA (4)."""
    return 1 if channels <= 2 else 3


@dataclass(frozen=True)
class Summary:
    """The mean and spread of ``count`` images of one size."""

    mean: np.ndarray    # [H, W, C] float32, in 8-bit units
    std: np.ndarray     # [H, W] float32, in 8-bit levels
    count: int

    @property
    def top(self) -> float:
        """The top of the standard deviation map's range."""
        return max(float(self.std.max(initial=0.0)), MIN_TOP)

    def mean_pixels(self) -> np.ndarray:
        """The mean as an 8-bit image, in the samples' layout (grey stays 2-D)."""
        pixels = np.round(self.mean).astype(np.uint8)
        return pixels[..., 0] if pixels.shape[-1] == 1 else pixels

    def std_pixels(self, top: float | None = None) -> np.ndarray:
        """The standard deviation map (viridis, 0..``top``) with its scale bar: [H + bar, W, 3] uint8."""
        return map_with_scale(self.std, top or self.top, UNIT)


class Moments:
    """Running sums of 8-bit images of one shape (HW or HWC), for their mean and spread."""

    def __init__(self) -> None:
        self.count = 0
        self._sum: np.ndarray | None = None
        self._squares: np.ndarray | None = None

    def add(self, image: np.ndarray) -> None:
        values = np.asarray(image)
        if values.dtype != np.uint8:
            raise TypeError(f"summaries are of 8-bit images, not {values.dtype}")
        values = values[..., None] if values.ndim == 2 else values
        if self._sum is None:
            self._sum = np.zeros(values.shape, np.int64)
            self._squares = np.zeros(values.shape, np.int64)
        elif values.shape != self._sum.shape:
            raise ValueError(f"an image of shape {values.shape} among images of shape {self._sum.shape}")
        if self.count == MAX_COUNT:
            raise ValueError(f"summaries are exact to {MAX_COUNT:,} images")
        wide = values.astype(np.int64)
        self._sum += wide
        wide *= wide
        self._squares += wide
        self.count += 1

    def summary(self) -> Summary:
        if not self.count:
            raise ValueError("no images to summarise")
        n, total, squares = self.count, self._sum, self._squares
        variance = (n * squares - total * total) / float(n * n)
        colour = colour_channels(total.shape[-1])
        std = np.sqrt(variance[..., :colour].mean(axis=-1))
        return Summary((total / n).astype(np.float32), std.astype(np.float32), n)


def summarise(images: Iterable[np.ndarray]) -> Summary:
    """The ``Summary`` of 8-bit images (HW or HWC), read one at a time."""
    moments = Moments()
    for image in images:
        moments.add(image)
    return moments.summary()


Region = tuple[slice, slice]  # (rows, columns) of a frame


@dataclass(frozen=True)
class FrameSummary:
    """The summary of frames that differ only inside ``regions`` (whole photos, which differ only
    where faces are pasted): outside them the mean is the frame and the spread 0."""

    frame: np.ndarray                        # the mean as 8-bit pixels, whole (HW or HWC)
    regions: list[tuple[Region, Summary]]
    count: int

    @property
    def top(self) -> float:
        return max([summary.top for _, summary in self.regions], default=MIN_TOP)

    @property
    def mean(self) -> np.ndarray:
        """[H, W, C] float32, in 8-bit units."""
        mean = (self.frame[..., None] if self.frame.ndim == 2 else self.frame).astype(np.float32)
        for (rows, cols), summary in self.regions:
            mean[rows, cols] = summary.mean
        return mean

    @property
    def std(self) -> np.ndarray:
        """[H, W] float32, in 8-bit levels."""
        std = np.zeros(self.frame.shape[:2], np.float32)
        for (rows, cols), summary in self.regions:
            std[rows, cols] = summary.std
        return std

    def mean_pixels(self) -> np.ndarray:
        return self.frame

    def std_pixels(self, top: float | None = None) -> np.ndarray:
        top = top or self.top
        height, width = self.frame.shape[:2]
        picture = np.empty((height, width, 3), np.uint8)
        picture[...] = colourise(np.zeros(1), top)[0]
        for (rows, cols), summary in self.regions:
            picture[rows, cols] = colourise(summary.std, top)
        return np.concatenate([picture, ScaleBar(width).draw(top, UNIT)], axis=0)


class FrameMoments:
    """``Moments`` of frames that differ only inside ``regions``: memory follows the regions, not the frame."""

    def __init__(self, regions: list[Region]) -> None:
        self.regions = regions
        self.moments = [Moments() for _ in regions]
        self.count = 0
        self.last: np.ndarray | None = None

    def add(self, frame: np.ndarray) -> None:
        for (rows, cols), moments in zip(self.regions, self.moments):
            moments.add(frame[rows, cols])
        self.count += 1
        self.last = frame

    def summary(self) -> FrameSummary:
        """Call before the last frame added is changed: its pixels outside the regions are the mean's."""
        if self.last is None:
            raise ValueError("no frames to summarise")
        regions = [(region, moments.summary()) for region, moments in zip(self.regions, self.moments)]
        frame = self.last.copy()
        for (rows, cols), summary in regions:
            frame[rows, cols] = summary.mean_pixels()
        return FrameSummary(frame, regions, self.count)
