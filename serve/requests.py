"""A sample request, read from multipart form fields or JSON, checked against the limits.

Every problem is a ``RequestError`` with its HTTP status, a kind (the ``/metrics`` label)
and one line for the client; nothing about one request can affect another.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from cvdvae import bicubic

MAX_SEED = 2**64 - 1
DEFAULT_N, DEFAULT_TEMPERATURE = 4, 0.8


class RequestError(Exception):
    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 8 * 2**20
    max_image_pixels: int = 4096 * 4096   # header size checked before any pixel is decoded
    max_faces: int = 16                   # faces super-resolved per photo (``faces``)
    max_output_pixels: int = 64_000_000   # a whole photo returned (``faces``), after upscaling
    max_n: int = 16
    timeout_s: float = 120.0


@dataclass(frozen=True)
class ModelShape:
    conditional: bool
    lr_size: int | None
    hr_size: int
    scale: int | None


@dataclass(frozen=True)
class SampleRequest:
    lr: np.ndarray | None          # [3, h, w] float32 0..255
    seed: int
    temperature: np.ndarray        # [n] float32
    consistent: bool
    from_hr: bool
    photo: np.ndarray | None = None  # ``faces``: the photo, HWC uint8, upright (then ``lr`` is None)
    max_faces: int = 16

    @property
    def n(self) -> int:
        return len(self.temperature)


def bad(message: str, kind: str = "bad_request", status: int = 400) -> RequestError:
    return RequestError(status, kind, message)


def parse_fields(fields: Mapping[str, Any], image: bytes | None, model: ModelShape, limits: Limits) -> SampleRequest:
    """``fields`` from a form (strings) or a JSON object (numbers, lists, booleans); ``image`` the
    uploaded file's bytes, else ``fields["image"]`` in base64."""
    unknown = set(fields) - {"image", "n", "seed", "temperature", "consistent", "from_hr", "faces", "max_faces"}
    if unknown:
        raise bad(f"unknown field(s): {', '.join(sorted(unknown))}")
    n = _integer(fields, "n", DEFAULT_N, 1, limits.max_n)
    seed = _integer(fields, "seed", 0, 0, MAX_SEED)
    temperature = _temperatures(fields.get("temperature"), n)
    consistent, from_hr = _boolean(fields, "consistent"), _boolean(fields, "from_hr")
    if image is None and fields.get("image") is not None:
        image = _base64(fields["image"])
    if not model.conditional:
        if image is not None or from_hr or consistent:
            raise bad("this is a prior-only model: it draws faces from noise alone; send no image")
        return SampleRequest(None, seed, temperature, False, False)
    if image is None:
        raise bad("image: missing (a file field 'image', or base64 in JSON)")
    if len(image) > limits.max_body_bytes:
        raise bad(f"image: {len(image)} bytes is more than the {limits.max_body_bytes} taken", "too_large", 413)
    if _boolean(fields, "faces"):
        if from_hr or consistent:
            raise bad("faces: a photo's faces are aligned and degraded as they need; drop from_hr and consistent")
        max_faces = _integer(fields, "max_faces", limits.max_faces, 1, limits.max_faces)
        return SampleRequest(None, seed, temperature, False, False, _decoded(image, limits, None, upright=True),
                             max_faces)
    return SampleRequest(_lr_image(image, model, from_hr, limits), seed, temperature, consistent, from_hr)


def _integer(fields: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = fields.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or not low <= number <= high:
        if name == "n" and number is not None and number > high:
            raise bad(f"n: {number} is more than the {high} samples a request may ask for", "too_large", 413)
        raise bad(f"{name}: {value!r} is not an integer in {low}..{high}")
    return number


def _temperatures(value: Any, n: int) -> np.ndarray:
    if value is None or value == "":
        return np.full(n, DEFAULT_TEMPERATURE, np.float32)
    items = value if isinstance(value, list) else str(value).split(",") if isinstance(value, str) else [value]
    try:
        parsed = [float(v) for v in items]
    except (TypeError, ValueError):
        raise bad(f"temperature: {value!r} is not a number or a list of numbers") from None
    if not parsed or any(not math.isfinite(t) or t < 0 for t in parsed):
        raise bad(f"temperature: {value!r}: each must be a finite number >= 0")
    if len(parsed) == 1:
        parsed = parsed * n
    if len(parsed) != n:
        raise bad(f"temperature: {len(parsed)} values for n = {n}: give one, or one per sample")
    return np.asarray(parsed, np.float32)


def _boolean(fields: Mapping[str, Any], name: str) -> bool:
    value = fields.get(name, False)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise bad(f"{name}: {value!r} is not true or false")


def _base64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise bad("image: expected a base64 string")
    try:
        return base64.b64decode(text.split(",", 1)[-1] if text.startswith("data:") else text, validate=True)
    except (binascii.Error, ValueError):
        raise bad("image: not valid base64") from None


def _lr_image(data: bytes, model: ModelShape, from_hr: bool, limits: Limits) -> np.ndarray:
    """The LR input [3, h, w] float32: the image as sent, or with ``from_hr`` its bicubic downscale."""
    want = model.hr_size if from_hr else model.lr_size
    what = "HR crops (from_hr)" if from_hr else "LR faces (or a photo: faces)"
    chw = np.ascontiguousarray(_decoded(data, limits, (want, what)).transpose(2, 0, 1))
    if from_hr:
        return bicubic.downscale_uint8(chw, model.hr_size // model.lr_size).astype(np.float32)
    return chw.astype(np.float32)


def _decoded(data: bytes, limits: Limits, size: tuple[int, str] | None, upright: bool = False) -> np.ndarray:
    """HWC uint8 RGB; the pixel count (and ``size``: the side required, and what it is) checked
    from the header, before any pixel is decoded; ``upright`` applies the EXIF orientation."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > limits.max_image_pixels:
                    raise bad(f"image: {img.width}x{img.height} pixels is more than the "
                              f"{limits.max_image_pixels} taken", "too_large", 413)
                if size is not None and img.size != (size[0], size[0]):
                    raise bad(f"image: {img.width}x{img.height}, the model takes {size[0]}x{size[0]} {size[1]}",
                              "wrong_size", 422)
                img.load()
                return np.asarray((ImageOps.exif_transpose(img) if upright else img).convert("RGB"), np.uint8)
    except RequestError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning, OSError,
            ValueError, SyntaxError) as err:
        raise bad(f"image: not a readable image ({str(err).splitlines()[0] if str(err) else type(err).__name__})",
                  "bad_image") from None
