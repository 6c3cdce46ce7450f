"""A per-pixel quantity as a picture: viridis, with a scale bar that gives its range.

Viridis (van der Walt and Smith, 2015, released to the public domain) is perceptually uniform:
equal steps in value look like equal steps in colour, and its lightness rises monotonically
from dark purple to yellow, so the picture reads in grey too and to most colour-blind eyes. It
is given here by its nine published stops (``viridis(9)``: 0, 1/8, ..., 1) and interpolated
linearly between them in sRGB, which stays within a few levels of the 256-entry table.

A map's range is ``0 .. top``: 0 is the first stop, ``top`` and above the last. The scale bar
under the map is the ramp from 0 to ``top`` with both ends labelled in ``unit``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VIRIDIS_STOPS = ("#440154", "#472D7B", "#3B528B", "#2C728E", "#21908C", "#27AD81", "#5DC863", "#AADC32", "#FDE725")
BAR_BACKGROUND = 255  # the scale bar's strip is white, like the grid's padding
MIN_RAMP = 16         # pixels of ramp a scale bar keeps between its labels, dropping the unit for them


def _stops() -> np.ndarray:
    return np.array([[int(code[i:i + 2], 16) for i in (1, 3, 5)] for code in VIRIDIS_STOPS], np.float64)


def colourise(values: np.ndarray, top: float) -> np.ndarray:
    """``values`` [H, W] as HWC uint8 viridis colours, 0 at the first stop and ``top`` (> 0) at the last."""
    stops = _stops()
    position = np.clip(np.asarray(values, np.float64) / top, 0.0, 1.0) * (len(stops) - 1)
    below = np.minimum(position.astype(np.int64), len(stops) - 2)
    weight = (position - below)[..., None]
    colours = stops[below] * (1 - weight) + stops[below + 1] * weight
    return np.round(colours).astype(np.uint8)


@dataclass(frozen=True)
class ScaleBar:
    """The strip under a map: its height follows the map's width, so a scale bar is legible on a
    64 px face and on a whole photo alike."""

    width: int

    @property
    def height(self) -> int:
        return max(14, self.width // 12)

    @property
    def font_size(self) -> int:
        return max(8, self.height * 5 // 8)

    def labels(self, top: float, unit: str, with_unit: bool = True) -> tuple[str, str]:
        return "0", f"{top:.3g} {unit}" if with_unit and unit else f"{top:.3g}"

    def draw(self, top: float, unit: str) -> np.ndarray:
        """[height, width, 3] uint8: the ramp 0 .. ``top`` between its two labelled ends (the unit is
        left out where the strip is too narrow for it)."""
        from PIL import Image, ImageDraw

        strip = Image.new("RGB", (self.width, self.height), (BAR_BACKGROUND,) * 3)
        draw = ImageDraw.Draw(strip)
        font = _font(self.font_size)
        margin = max(1, self.height // 7)
        for with_unit in (True, False):
            low, high = self.labels(top, unit, with_unit)
            start = int(np.ceil(draw.textlength(low, font=font))) + 2 * margin
            stop = self.width - int(np.ceil(draw.textlength(high, font=font))) - 2 * margin
            if stop - start >= MIN_RAMP:
                break
        if stop > start:
            ramp = colourise(np.linspace(0, top, stop - start)[None, :], top)
            strip.paste(Image.fromarray(np.repeat(ramp, self.height - 2 * margin, axis=0)), (start, margin))
        draw.text((margin, self.height / 2), low, fill=(0, 0, 0), font=font, anchor="lm")
        draw.text((self.width - margin, self.height / 2), high, fill=(0, 0, 0), font=font, anchor="rm")
        return np.asarray(strip)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow's scalable built-in font (needs FreeType)
    except (ImportError, AttributeError, TypeError):
        return ImageFont.load_default()


def map_with_scale(values: np.ndarray, top: float, unit: str = "levels") -> np.ndarray:
    """``values`` [H, W] colourised (``colourise``) with the scale bar under it: [H + bar, W, 3] uint8."""
    return np.concatenate([colourise(values, top), ScaleBar(values.shape[1]).draw(top, unit)], axis=0)
