"""Reading input images: formats, conversion to 8-bit RGB, size checks, bombs.

Every problem with one file is an ``InputError`` naming that file; the caller reports it
and goes on with the others.
"""

from __future__ import annotations

import glob
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cvdvae import bicubic
from cvdvae.errors import CVDVAEError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_PIXELS = 4096 * 4096  # far above any face size we take; larger headers are refused undecoded
MAX_PHOTO_PIXELS = 100_000_000  # --faces: a 100-megapixel photo; larger headers are refused undecoded


class InputError(CVDVAEError):
    """One input file is unusable (the others are still processed)."""


@dataclass
class LoadedImage:
    path: Path
    lr: np.ndarray | None     # [3, h, w] float32, 0..255 (None: a prior-only model's draw)
    hr: np.ndarray | None     # [3, H, W] uint8 with --from-hr
    converted_from: str | None  # the original mode when it was not 8-bit RGB


def expand_inputs(specs: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (their images, sorted) and globs -> (image paths, problems)."""
    paths: list[Path] = []
    problems: list[str] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in EXTENSIONS and f.is_file())
            if not found:
                problems.append(f"{spec}: no {'/'.join(e[1:] for e in EXTENSIONS)} images in this folder")
            paths += found
        elif any(ch in spec for ch in "*?["):
            found = sorted(Path(f) for f in glob.glob(spec, recursive=True) if Path(f).suffix.lower() in EXTENSIONS)
            if not found:
                problems.append(f"{spec}: the pattern matches no image")
            paths += found
        else:
            paths.append(p)
    unique = list(dict.fromkeys(paths))
    return unique, problems


def _to_rgb8(img) -> tuple[np.ndarray, str | None]:
    """HWC uint8 RGB; 16-bit and float modes are scaled, alpha dropped, palettes expanded."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8), None
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if mode != "F" else max(float(values.max()), 1.0)
        gray = np.clip(np.round(values * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2), mode
    return np.asarray(img.convert("RGB"), dtype=np.uint8), mode


def read_rgb(path: Path, max_pixels: int, check: Callable[[Any], None] | None = None,
             upright: bool = False) -> tuple[np.ndarray, str | None]:
    """``path`` as HWC uint8 RGB and the mode it was converted from. ``check`` sees the opened
    image before any pixel is decoded (and raises ``InputError``); ``upright`` applies the EXIF
    orientation (what a camera records instead of turning the pixels)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > max_pixels:
                    raise InputError(f"{path}: {img.width}x{img.height} pixels is more than the "
                                     f"{max_pixels / 1e6:.0f} megapixels taken (a decompression bomb?)")
                if check is not None:
                    check(img)
                img.load()
                return _to_rgb8(ImageOps.exif_transpose(img) if upright else img)
    except InputError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(f"{path}: not a readable image ({err})") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise InputError(f"{path}: unreadable or truncated image ({err})") from None


def load_image(path: Path, lr_size: int, hr_size: int, from_hr: bool) -> LoadedImage:
    want = hr_size if from_hr else lr_size

    def check_size(img) -> None:
        if img.size != (want, want):
            hint = "" if from_hr or img.size != (hr_size, hr_size) else " (an HR image? add --from-hr)"
            hint = hint or (" (a photo? add --faces)" if min(img.size) > hr_size else "")
            raise InputError(f"{path}: is {img.width}x{img.height}, the model takes "
                             f"{want}x{want}{' HR' if from_hr else ' LR'} images{hint}")

    rgb, converted = read_rgb(path, MAX_PIXELS, check_size)
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    if from_hr:
        return LoadedImage(path, bicubic.downscale_uint8(chw, hr_size // lr_size), chw, converted)
    return LoadedImage(path, chw.astype(np.float32), None, converted)


def load_photo(path: Path) -> np.ndarray:
    """A photo of any size up to ``MAX_PHOTO_PIXELS``, upright, as HWC uint8 RGB."""
    return read_rgb(path, MAX_PHOTO_PIXELS, upright=True)[0]
