"""A sample request, read from a multipart form, a URL-encoded form or JSON, checked against the limits.

Every problem is a ``RequestError`` with its HTTP status, a kind (the ``/metrics`` label)
and one line for the client that names no path, address or exception text; nothing about one
request can affect another. The image itself is decoded later, by the pipeline's one decoder
(``request_error`` maps its errors).
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import parse_qsl

import numpy as np
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from cvdvae.errors import CVDVAEError, InputError
from cvdvae.seeding import MAX_SEED

from ..images.photo_format import FORMATS, PhotoFormat
from ..pipeline import DEFAULT_TEMPERATURE, MAX_TEMPERATURE, check_temperatures
from .options import Limits

DEFAULT_N = 4
# The request's fields, as the OpenAPI schema describes them (runtime.serve.ingress); a field not here is refused.
FIELD_SCHEMAS: dict[str, dict[str, Any]] = {
    "image": {"type": "string", "description": "the LR face (or, with faces, the photo): PNG, JPEG or WebP; a file "
                                               "field in a form, base64 in JSON; none for a prior-only model"},
    "n": {"type": "integer", "minimum": 1, "default": DEFAULT_N,
          "description": "samples (at most the service's max_n)"},
    "seed": {"type": "integer", "minimum": 0, "default": 0,
             "description": "noise seed, 0 .. 2^64 - 1: the same seed gives the same bytes"},
    "temperature": {"oneOf": [{"type": "number"}, {"type": "array", "items": {"type": "number"}}, {"type": "string"}],
                    "default": DEFAULT_TEMPERATURE,
                    "description": "0 to 10: one for every sample, one per sample, or a comma list in a form"},
    "consistent": {"type": "boolean", "default": False, "description": "apply the exact LR-consistency projection"},
    "from_hr": {"type": "boolean", "default": False, "description": "the image is an HR face, degraded first"},
    "faces": {"type": "boolean", "default": False,
              "description": "the image is a photo: its faces are found, sampled and pasted back"},
    "max_faces": {"type": "integer", "minimum": 1, "description": "with faces: the most confident faces kept"},
    "summary": {"type": "boolean", "default": False, "description": "the samples' mean and standard deviation map too"},
    "format": {"type": "string", "enum": list(FORMATS),
               "description": "with faces: the whole photos' file format (default: the photo's own; face samples "
                              "stay PNG)"},
    "quality": {"type": "integer", "minimum": 1, "maximum": 100,
                "description": "with faces: JPEG or WebP quality (default 95 for JPEG, 90 for WebP)"},
    "like": {"type": "integer", "minimum": 0,
             "description": "with vary_from: the sample whose coarse levels every sample keeps (it appears among them)"},
    "like_seed": {"type": "integer", "minimum": 0, "description": "the seed of the like sample (default: seed)"},
    "vary_from": {"type": "integer", "description": "with like: the level (px) from which the samples differ"},
    "temperature_at": {"oneOf": [{"type": "object", "additionalProperties": {"type": "number"}}, {"type": "string"}],
                       "description": "a factor per level (px), from that level on, on the prior's groups: a JSON "
                                      "object or 128=0.5 pairs in a form"},
}
FIELDS = set(FIELD_SCHEMAS)
INPUT_STATUS = {"too_large": 413, "wrong_size": 422, "no_face": 422, "unreadable": 400, "missing": 400,
                "unsupported_format": 415}
JSON_DEPTH = 8  # the request is a flat object with a list or two: anything deeper is refused
MAX_PARTS = 16  # fields of a form
NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))  # deleted by one pass in C: a regex holds the GIL for seconds


class RequestError(Exception):
    def __init__(self, status: int, kind: str, message: str):
        super().__init__(status, kind, message)
        self.status, self.kind, self.message = status, kind, message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class SampleRequest:
    image: bytes | None            # the uploaded image (None: a prior-only model's draw)
    seed: int
    temperature: np.ndarray        # [n] float32
    consistent: bool
    from_hr: bool
    faces: bool = False            # ``image`` is a photo: its faces are found, sampled and pasted back
    max_faces: int = 16
    summary: bool = False          # the samples' mean and standard deviation map too
    variation: dict[str, Any] = field(default_factory=dict)  # like, like_seed, vary_from, temperature_at (Pipeline)
    photo_format: PhotoFormat = PhotoFormat()  # faces: the whole photos' (the input's own unless named)

    @property
    def n(self) -> int:
        return len(self.temperature)


def bad(message: str, kind: str = "bad_request", status: int = 400) -> RequestError:
    return RequestError(status, kind, message)


def field_spelling(name: str, value: Any) -> str:
    """A setting named in a library error, as a request field: ``from_hr: true``."""
    return name if value is None else f"{name}: {json.dumps(value)}"


def timed_out(seconds: float) -> RequestError:
    """The 504 of a request that outlived its ``timeout_s``."""
    return RequestError(504, "timeout", f"no answer within {seconds:g} s")


def request_error(err: CVDVAEError) -> RequestError:
    """A library error about the request's image or settings as the client's 4xx."""
    if isinstance(err, InputError):
        message = err.describe(field_spelling)
        if err.kind == "no_face":  # the search settings it names are not request fields
            message = message.split(";")[0] + ")"
        return RequestError(INPUT_STATUS.get(err.kind, 400), "bad_image" if err.kind == "unreadable" else err.kind,
                            message)
    return bad(err.describe(field_spelling))


def parse_request(content_type: str | None, body: bytes | bytearray, conditional: bool,
                  limits: Limits) -> SampleRequest:
    """The request in ``body``, read by its content type: a multipart form (the image as a file
    field), a URL-encoded form or a JSON object (the image in base64). A ``bytearray`` body is
    emptied once what it holds is copied out, so a large body is in memory once, not twice."""
    media, params = parse_options_header(content_type or "")
    media = media.decode("latin-1").lower()
    if media == "multipart/form-data":
        fields, image = parse_multipart(body, params.get(b"boundary"))
    elif media == "application/x-www-form-urlencoded":
        fields, image = parse_urlencoded(body), None
    elif media == "application/json" or media.endswith("+json") or not (media or body):
        fields, image = parse_json(body), None
    else:
        raise bad(f"content type {_shown(media)} is not taken: send multipart/form-data or application/json",
                  "unsupported_media_type", 415)
    return parse_fields(fields, image, conditional, limits)


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)


def parse_multipart(body: bytes | bytearray, boundary: bytes | None) -> tuple[dict[str, str], bytes | None]:
    """A multipart/form-data body's text fields, and its one file (the ``image`` field)."""
    if not boundary:
        raise bad("the multipart content type has no boundary")
    parts: list[_Part] = []
    header = [b"", b""]
    ended = []

    def begin() -> None:
        if len(parts) == MAX_PARTS:
            raise bad(f"the form has more than {MAX_PARTS} fields")
        parts.append(_Part())

    def header_end() -> None:
        parts[-1].headers[header[0].strip().lower()] = header[1].strip()
        header[:] = [b"", b""]

    callbacks = {"on_part_begin": begin, "on_header_end": header_end, "on_end": lambda: ended.append(True),
                 "on_header_field": lambda data, start, end: header.__setitem__(0, header[0] + data[start:end]),
                 "on_header_value": lambda data, start, end: header.__setitem__(1, header[1] + data[start:end]),
                 "on_part_data": lambda data, start, end: parts[-1].data.extend(memoryview(data)[start:end])}
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except FormParserError:
        raise bad("the multipart body is malformed (does its boundary match the content type's?)") from None
    finally:
        _release(body)
    if not ended:
        raise bad("the multipart body ends before its closing boundary")
    return _form_fields(parts)


def _form_fields(parts: list[_Part]) -> tuple[dict[str, str], bytes | None]:
    fields: dict[str, str] = {}
    image = None
    for part in parts:
        disposition, options = parse_options_header(part.headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            raise bad("a multipart part has no form-data name")
        name = options[b"name"].decode("utf-8", "replace")
        if name in fields or (name == "image" and image is not None):
            raise bad(f"{_shown(name)}: sent twice (one image per request)")
        if b"filename" in options:
            if name != "image":
                raise bad(f"{_shown(name)}: a file; only the field 'image' takes one")
            image = bytes(part.data)
            continue
        try:
            fields[name] = part.data.decode("utf-8")
        except UnicodeDecodeError:
            raise bad(f"{_shown(name)}: not UTF-8 text") from None
    return fields, image


def parse_urlencoded(body: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=bool(body),
                          max_num_fields=MAX_PARTS)
    except (UnicodeDecodeError, ValueError):
        raise bad("the form body is not valid URL encoding") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise bad(f"{_shown(name)}: sent twice")
        fields[name] = value
    return fields


def parse_json(body: bytes | bytearray) -> dict[str, Any]:
    """The body as a JSON object of at most ``JSON_DEPTH`` levels, else a 400."""
    depth = deepest = 0
    for bracket in body.translate(None, NOT_BRACKETS):  # before the parser can recurse into them
        depth += 1 if bracket in b"[{" else -1
        deepest = max(deepest, depth)
    if deepest > JSON_DEPTH:
        raise bad(f"the JSON body is nested {deepest} levels deep; a request is a flat object")
    try:
        text = body.decode(json.detect_encoding(body), "surrogatepass")  # what json.loads does with bytes
    except UnicodeDecodeError:
        raise bad("the body is not valid JSON") from None
    finally:
        _release(body)
    try:
        fields = json.loads(text or "{}")
    except ValueError:
        raise bad("the body is not valid JSON") from None
    if not isinstance(fields, dict):
        raise bad("the JSON body must be an object")
    return fields


def parse_fields(fields: Mapping[str, Any], image: bytes | None, conditional: bool, limits: Limits) -> SampleRequest:
    """``fields`` from a form (strings) or a JSON object (numbers, lists, booleans); ``image`` the
    uploaded file's bytes, else ``fields["image"]`` in base64."""
    unknown = set(fields) - FIELDS
    if unknown:
        raise bad(f"unknown field(s): {', '.join(sorted(map(str, unknown)))[:200]}")
    n = _integer(fields, "n", DEFAULT_N, 1, limits.max_n)
    seed = _integer(fields, "seed", 0, 0, MAX_SEED)
    temperature = _temperatures(fields.get("temperature"), n)
    consistent, from_hr = _boolean(fields, "consistent"), _boolean(fields, "from_hr")
    summary = _boolean(fields, "summary")
    if image is None and fields.get("image") is not None:
        image = _base64(fields["image"])
    variation = _variation(fields)
    if not conditional:
        if image is not None or from_hr or consistent:
            raise bad("this is a prior-only model: it draws faces from noise alone; send no image")
        return SampleRequest(None, seed, temperature, False, False, summary=summary, variation=variation)
    if image is None:
        raise bad("image: missing (a file field 'image', or base64 in JSON)")
    if len(image) > limits.max_body_bytes:
        raise bad(f"image: {len(image)} bytes is more than the {limits.max_body_bytes} taken", "too_large", 413)
    if _boolean(fields, "faces"):
        if from_hr or consistent:
            raise bad("faces: a photo's faces are aligned and degraded as they need; drop from_hr and consistent")
        max_faces = _integer(fields, "max_faces", limits.max_faces, 1, limits.max_faces)
        return SampleRequest(image, seed, temperature, False, False, True, max_faces, summary, variation,
                             _photo_format(fields))
    if fields.get("format") is not None or fields.get("quality") is not None:
        raise bad("format and quality choose the whole photos' file format: they need faces: true")
    return SampleRequest(image, seed, temperature, consistent, from_hr, summary=summary, variation=variation)


def _variation(fields: Mapping[str, Any]) -> dict[str, Any]:
    """like, like_seed, vary_from (integers) and temperature_at ({"128": 0.5} in JSON, "128=0.5,256=0.3" in a
    form), as ``Pipeline`` takes them; the pipeline checks them against the model's levels."""
    chosen: dict[str, Any] = {name: _integer(fields, name, -1, 0, MAX_SEED) for name in ("like", "like_seed",
                                                                                        "vary_from")}
    chosen = {name: value for name, value in chosen.items() if value != -1}
    value = fields.get("temperature_at")
    if value not in (None, "", {}):
        items = value.items() if isinstance(value, dict) else \
            [item.split("=", 1) for item in str(value).split(",") if item.strip()] if isinstance(value, str) else None
        try:
            chosen["temperature_at"] = {int(level): float(factor) for level, factor in items or [()]}
        except (TypeError, ValueError):
            raise bad(f"temperature_at: {_shown(value)} is not level=factor pairs, e.g. {{\"128\": 0.5}} or "
                      "128=0.5,256=0.3") from None
    return chosen


def _release(body: bytes | bytearray) -> None:
    """Free a ``bytearray`` body whose content has been copied out."""
    if isinstance(body, bytearray):
        body.clear()


def _shown(value: Any) -> str:
    """A client's value in a message: short, and never an object's repr."""
    text = json.dumps(value) if isinstance(value, (int, float, str, bool, list, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _photo_format(fields: Mapping[str, Any]) -> PhotoFormat:
    name = fields.get("format")
    if name is not None and name not in FORMATS:
        raise bad(f"format: {_shown(name)} is not one of {', '.join(FORMATS)}")
    quality = _integer(fields, "quality", 0, 1, 100) if fields.get("quality") not in (None, "") else None
    try:
        return PhotoFormat(name, quality)
    except CVDVAEError as err:
        raise bad(str(err)) from None


def _integer(fields: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = fields.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or isinstance(value, bool) or not low <= number <= high:
        if name == "n" and number is not None and number > high:
            raise bad(f"n: {number} is more than the {high} samples a request may ask for", "too_large", 413)
        raise bad(f"{name}: {_shown(value)} is not an integer in {low}..{high}")
    return number


def _temperatures(value: Any, n: int) -> np.ndarray:
    if value is None or value == "":
        value = DEFAULT_TEMPERATURE
    items = value if isinstance(value, list) else str(value).split(",") if isinstance(value, str) else [value]
    try:
        parsed = [v if isinstance(v, bool) else float(v) for v in items]
    except (TypeError, ValueError):
        raise bad(f"temperature: {_shown(value)} is not a number or a list of numbers") from None
    if len(parsed) not in (1, n):
        raise bad(f"temperature: {len(parsed)} values for n = {n}: give one, or one per sample")
    try:
        return check_temperatures(parsed if len(parsed) > 1 else parsed[0], n)
    except CVDVAEError:
        raise bad(f"temperature: {_shown(value)}: each must be a number from 0 to {MAX_TEMPERATURE:g}") from None


def _boolean(fields: Mapping[str, Any], name: str) -> bool:
    value = fields.get(name, False)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise bad(f"{name}: {_shown(value)} is not true or false")


def _base64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise bad("image: expected a base64 string")
    try:
        # what b64decode(validate=True) does, on the str itself (b64decode would copy it to bytes first)
        return binascii.a2b_base64(text.split(",", 1)[-1] if text.startswith("data:") else text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise bad("image: not valid base64") from None
