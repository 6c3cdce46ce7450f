"""A sample request, read from multipart form fields or JSON, checked against the limits.

Every problem is a ``RequestError`` with its HTTP status, a kind (the ``/metrics`` label)
and one line for the client; nothing about one request can affect another. The image itself
is decoded later, by the pipeline's one decoder (``request_error`` maps its errors).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from cvdvae.errors import CVDVAEError
from cvdvae.seeding import MAX_SEED

from ..images.decode import InputError
from ..pipeline import DEFAULT_TEMPERATURE, MAX_TEMPERATURE, check_temperatures

DEFAULT_N = 4
FIELDS = {"image", "n", "seed", "temperature", "consistent", "from_hr", "faces", "max_faces"}
INPUT_STATUS = {"too_large": 413, "wrong_size": 422, "no_face": 422, "unreadable": 400, "missing": 400}


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
class SampleRequest:
    image: bytes | None            # the uploaded image (None: a prior-only model's draw)
    seed: int
    temperature: np.ndarray        # [n] float32
    consistent: bool
    from_hr: bool
    faces: bool = False            # ``image`` is a photo: its faces are found, sampled and pasted back
    max_faces: int = 16

    @property
    def n(self) -> int:
        return len(self.temperature)


def bad(message: str, kind: str = "bad_request", status: int = 400) -> RequestError:
    return RequestError(status, kind, message)


def field_spelling(name: str, value: Any) -> str:
    """A setting named in a library error, as a request field: ``from_hr: true``."""
    return f"{name}: {json.dumps(value)}"


def request_error(err: CVDVAEError) -> RequestError:
    """A library error about the request's image or settings as the client's 4xx."""
    if isinstance(err, InputError):
        message = err.describe(field_spelling)
        if err.kind == "no_face":  # the search settings it names are not request fields
            message = message.split(";")[0] + ")"
        return RequestError(INPUT_STATUS.get(err.kind, 400), "bad_image" if err.kind == "unreadable" else err.kind,
                            message)
    return bad(err.describe(field_spelling))


def parse_fields(fields: Mapping[str, Any], image: bytes | None, conditional: bool, limits: Limits) -> SampleRequest:
    """``fields`` from a form (strings) or a JSON object (numbers, lists, booleans); ``image`` the
    uploaded file's bytes, else ``fields["image"]`` in base64."""
    unknown = set(fields) - FIELDS
    if unknown:
        raise bad(f"unknown field(s): {', '.join(sorted(unknown))}")
    n = _integer(fields, "n", DEFAULT_N, 1, limits.max_n)
    seed = _integer(fields, "seed", 0, 0, MAX_SEED)
    temperature = _temperatures(fields.get("temperature"), n)
    consistent, from_hr = _boolean(fields, "consistent"), _boolean(fields, "from_hr")
    if image is None and fields.get("image") is not None:
        image = _base64(fields["image"])
    if not conditional:
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
        return SampleRequest(image, seed, temperature, False, False, True, max_faces)
    return SampleRequest(image, seed, temperature, consistent, from_hr)


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
        value = DEFAULT_TEMPERATURE
    items = value if isinstance(value, list) else str(value).split(",") if isinstance(value, str) else [value]
    try:
        parsed = [v if isinstance(v, bool) else float(v) for v in items]
    except (TypeError, ValueError):
        raise bad(f"temperature: {value!r} is not a number or a list of numbers") from None
    if len(parsed) not in (1, n):
        raise bad(f"temperature: {len(parsed)} values for n = {n}: give one, or one per sample")
    try:
        return check_temperatures(parsed if len(parsed) > 1 else parsed[0], n)
    except CVDVAEError:
        raise bad(f"temperature: {value!r}: each must be a number from 0 to {MAX_TEMPERATURE:g}") from None


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
