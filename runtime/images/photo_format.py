"""The file format of whole photos: PNG, JPEG or WebP, by default the input photo's own.

A JPEG comes back as a JPEG (at ``DEFAULT_QUALITY``), a PNG as a PNG. Every file is tagged sRGB
and stored upright (orientation 1): the decoder has already converted the photo to sRGB and
applied its EXIF orientation. A JPEG holds no transparency: a photo's own alpha is left out
(its pixels are the photo over white, as it was read), and faces alone on a transparent canvas
(``paste`` "transparent") are never JPEG. Face crops and LR-face samples stay PNG.
"""

from __future__ import annotations

from dataclasses import dataclass

from cvdvae.errors import CVDVAEError

FORMATS = ("png", "jpeg", "webp")
SUFFIXES = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
DEFAULT_QUALITY = {"jpeg": 95, "webp": 90}
WEBP_MAX_SIDE = 16383  # the WebP bitstream's limit
FAST_PNG_PIXELS = 4_000_000  # larger whole photos are deflated at level 1: much faster, a little larger


@dataclass(frozen=True)
class PhotoFormat:
    """``name``: "png", "jpeg", "webp", or None for the input's own; ``quality`` 1..100 for JPEG
    and WebP (None: ``DEFAULT_QUALITY``)."""

    name: str | None = None
    quality: int | None = None

    def __post_init__(self) -> None:
        if self.name is not None and self.name not in FORMATS:
            raise CVDVAEError(f"photo format must be one of {', '.join(FORMATS)}, not {self.name!r}")
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise CVDVAEError(f"quality must be 1 to 100, not {self.quality}")
        if self.quality is not None and self.name == "png":
            raise CVDVAEError("quality applies to JPEG and WebP; PNG is lossless")

    def chosen(self, input_format: str | None, transparent: bool) -> "PhotoFormat":
        """The format decided: the input's own when none was named (PNG for an array or an image of
        another kind, and for faces on a transparent canvas when the input was a JPEG)."""
        if transparent and self.name == "jpeg":
            raise CVDVAEError("faces on a transparent canvas (paste 'transparent') cannot be JPEG: choose png or webp")
        name = self.name or (input_format or "").lower()
        if name not in FORMATS or (transparent and name == "jpeg"):
            name = "png"
        quality = None if name == "png" else (self.quality or DEFAULT_QUALITY[name])
        return PhotoFormat(name, quality)

    @property
    def suffix(self) -> str:
        return SUFFIXES[self.name or "png"]


def png_level(height: int, width: int) -> int:
    """The zlib level a whole photo of this size is deflated at."""
    return 1 if height * width > FAST_PNG_PIXELS else 6


def check_webp_size(height: int, width: int) -> None:
    if max(height, width) > WEBP_MAX_SIDE:
        raise CVDVAEError(f"a {width}x{height} photo is larger than WebP holds ({WEBP_MAX_SIDE} pixels a side): "
                          "choose png or jpeg, or a smaller upscale")
