"""The one image decoder: a path, bytes, a PIL image or an array -> 8-bit sRGB pixels.

``cvdvae run``, ``cvdvae serve`` and ``Pipeline`` all read images here, so an image gives the
same pixels whichever way it arrives. Files and bytes are parsed only as PNG, JPEG or WebP
(``FORMATS``): what cameras, phones and browsers write. Pillow reads some 70 formats, each a
parser exposed to untrusted bytes (EPS even calls Ghostscript), so the others are refused
before any of their parsers runs, named from their first bytes where they are common.

- the EXIF orientation is applied (what a camera records instead of turning the pixels);
- an embedded ICC profile other than sRGB is converted to sRGB (littlecms, through Pillow's
  ``ImageCms``); a profile that cannot be read or does not fit the image is ignored, and said;
- 16-bit and 32-bit integer grey is scaled to 8 bits (``round(v * 255 / 65535)``); float
  grey is taken as 0..1 when all its values lie in [0, 1], else as 0..255 levels;
- grey, palette and CMYK become RGB; transparency is composited over ``ALPHA_BACKGROUND``.

The pixel count is checked from the header, before any pixel is decoded (a decompression
bomb never allocates), and a caller's ``check`` sees the header too. Every problem is an
``InputError`` naming the image; callers going through many images report it and go on.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Union

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

from cvdvae.errors import InputError

ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white, as image viewers do
FORMATS = ("PNG", "JPEG", "WEBP")
# The first bytes of formats people send by mistake, to name them in the refusal.
SIGNATURES = ((b"II*\0", "TIFF"), (b"MM\0*", "TIFF"), (b"BM", "BMP"), (b"GIF8", "GIF"), (b"%PDF", "PDF"),
              (b"%!PS", "PostScript (EPS)"), (b"\xc5\xd0\xd3\xc6", "PostScript (EPS)"), (b"8BPS", "Photoshop (PSD)"),
              (b"\0\0\1\0", "ICO"), (b"\0\0\0\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"))
INTEGER_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")
TRANSPARENT = ("RGBA", "LA", "PA", "RGBa", "La")
GREY = ("1", "L", "LA", "La", "F", *INTEGER_GREY)

ImageSource = Union[str, Path, bytes, bytearray, "Image.Image", np.ndarray]


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray          # [H, W, 3] uint8, sRGB, upright
    converted: str | None       # what was done to reach 8-bit sRGB RGB, when anything was
    name: str                   # the file name, or what the image was, for messages
    alpha: np.ndarray | None = None  # [H, W] uint8, upright: the image's transparency, when it had any
    grey: bool = False          # the image was grey (its pixels are R = G = B)
    format: str | None = None   # the file format it was read from (one of ``FORMATS``), when known


def source_name(source: ImageSource) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return "image bytes"
    return "array" if isinstance(source, np.ndarray) else "PIL image"


def decode_image(source: ImageSource, max_pixels: int, check: Callable[[Any], None] | None = None,
                 name: str | None = None) -> DecodedImage:
    """``source`` as 8-bit sRGB RGB. ``check(img)`` sees the opened image before its pixels are
    decoded and raises ``InputError`` to refuse it; ``name`` replaces the source's own in messages."""
    from PIL import Image, UnidentifiedImageError

    name = name or source_name(source)
    if isinstance(source, np.ndarray):
        source = _array_image(source, name)
    if isinstance(source, Image.Image):
        return _decode_opened(source, max_pixels, check, name)
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise InputError(f"{name}: no such file", "missing")
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with warnings.catch_warnings():
            # The header check below is the limit; Pillow's own warning threshold sits lower.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream, formats=FORMATS) as img:
                return _decode_opened(img, max_pixels, check, name)
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(f"{name}: more than {max_pixels / 1e6:.0f} megapixels (a decompression bomb?)",
                         "too_large") from None
    except UnidentifiedImageError:
        raise _unsupported(stream, name) from None
    except Exception as err:  # noqa: BLE001 - Pillow's decoders raise many types for a bad file
        raise InputError(f"{name}: not a readable image ({error_reason(err)})") from None


def _decode_opened(img: Any, max_pixels: int, check: Callable[[Any], None] | None, name: str) -> DecodedImage:
    from PIL import ImageOps

    if img.width * img.height > max_pixels:
        raise InputError(f"{name}: {img.width}x{img.height} pixels is more than the {max_pixels / 1e6:.0f} "
                         "megapixels taken (a decompression bomb?)", "too_large")
    if check is not None:
        check(img)
    try:
        img.load()
        upright = ImageOps.exif_transpose(img)
        pixels, converted = to_srgb8(upright)
        alpha = _alpha(upright)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - a truncated or corrupt file fails only while decoding
        raise InputError(f"{name}: unreadable or truncated image ({error_reason(err)})") from None
    return DecodedImage(pixels, converted, name, alpha, upright.mode in GREY, img.format)


def _alpha(img: Any) -> np.ndarray | None:
    """The image's alpha channel (palette transparency included), or None when it has none."""
    if img.mode in ("P", "PA") and (img.mode == "PA" or "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode not in TRANSPARENT:
        return None
    return np.asarray(img.getchannel("A" if "A" in img.getbands() else "a"), dtype=np.uint8)


def to_srgb8(img: Any) -> tuple[np.ndarray, str | None]:
    """HWC uint8 sRGB RGB pixels of a loaded PIL image, and what was converted (None: nothing)."""
    from PIL import Image

    icc, converted = img.info.get("icc_profile"), []
    if img.mode != "RGB":
        converted.append({"F": "float grey", "I": "32-bit grey"}.get(img.mode, "16-bit grey")
                         if img.mode in INTEGER_GREY or img.mode == "F" else img.mode)
    if img.mode in INTEGER_GREY or img.mode == "F":
        img = Image.fromarray(_grey_levels(img), "L")
    elif img.mode in ("P", "PA"):
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    if icc:
        img, note = _to_srgb_profile(img, icc)
        converted += [note] if note else []
    if img.mode in TRANSPARENT:
        background = Image.new("RGBA", img.size, (*ALPHA_BACKGROUND, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
        converted.append("alpha over white")
    pixels = np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
    return pixels, ", ".join(converted) or None


def _grey_levels(img: Any) -> np.ndarray:
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        values = np.nan_to_num(values, nan=0.0)
        in_unit_range = values.size and values.min() >= 0.0 and values.max() <= 1.0
        return np.clip(np.round(values * (255.0 if in_unit_range else 1.0)), 0, 255).astype(np.uint8)
    return np.clip(np.round(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)


def _to_srgb_profile(img: Any, icc: bytes) -> tuple[Any, str | None]:
    """``img`` (L, LA, RGB, RGBA or CMYK) converted from the ICC profile ``icc`` to sRGB, alpha kept;
    and what was done (None: the profile is sRGB already)."""
    from PIL import ImageCms

    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = (ImageCms.getProfileDescription(profile) or "ICC").strip()
        if "srgb" in description.lower():
            return img, None
        alpha = img.getchannel("A") if img.mode in ("LA", "RGBA") else None
        solid = img.convert({"LA": "L", "RGBA": "RGB"}.get(img.mode, img.mode))
        out = ImageCms.profileToProfile(solid, profile, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except Exception:  # noqa: BLE001 - littlecms refuses profiles that do not fit the image in many ways
        return img, "its ICC profile ignored (unreadable, or not for this kind of image)"
    if alpha is not None:
        out.putalpha(alpha)
    return out, f"{description} profile -> sRGB"


def _array_image(array: np.ndarray, name: str) -> Any:
    """An HWC uint8 array (RGB, RGBA or grey) as a PIL image."""
    from PIL import Image

    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise InputError(f"{name}: an image array must be uint8 [H, W, 3] (RGB), [H, W, 4] (RGBA) or [H, W] "
                         f"(grey), not {array.dtype} {list(array.shape)}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return Image.fromarray(np.ascontiguousarray(array))


def _unsupported(stream: Any, name: str) -> InputError:
    """The refusal of bytes that are not PNG, JPEG or WebP, naming what they are when it is clear."""
    try:
        if isinstance(stream, (str, Path)):
            with open(stream, "rb") as f:
                head = f.read(16)
        else:
            stream.seek(0)
            head = stream.read(16)
    except OSError:
        head = b""
    found = next((what for magic, what in SIGNATURES if head.startswith(magic)), None)
    if found is None and head[4:8] == b"ftyp":
        found = "HEIF/AVIF"
    if found:
        return InputError(f"{name}: a {found} image; only PNG, JPEG and WebP are taken", "unsupported_format")
    return InputError(f"{name}: not a readable image (only PNG, JPEG and WebP are taken)", "unreadable")


def error_reason(err: BaseException) -> str:
    """The first line of an exception's message, or its type: never a path or an object's address."""
    text = str(err).splitlines()[0] if str(err) else ""
    if not text or " at 0x" in text:
        return type(err).__name__
    return text
