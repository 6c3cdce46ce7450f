"""The VD-VAE layer-string grammar and per-resolution width maps.

A layer string is a comma-separated list of tokens, each read by testing its letter in
the order ``x``, ``m``, ``d`` (as the official parser does):

* ``RxN``: N blocks at resolution R;
* ``RmM``: one block at R with mixin M (decoder strings);
* ``RdK``: one block at R that ends with K x K average pooling (encoder strings);
* ``R``:  one block at R.

The same parser serves both strings, so the second field means "mixin" in a decoder
string and "down rate" in an encoder string.
"""

from __future__ import annotations

from .errors import ConfigError

Layer = tuple[int, int | None]


def _int(text: str, token: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"bad layer token {token!r} in {what}: {text!r} is not an integer") from None
    if value < 1:
        raise ConfigError(f"bad layer token {token!r} in {what}: {value} must be at least 1")
    return value


def parse_layer_string(spec: str, what: str = "layer string") -> list[Layer]:
    """Expand a layer string into one ``(resolution, extra)`` pair per block."""
    if not spec or not spec.strip():
        raise ConfigError(f"{what} is empty")
    layers: list[Layer] = []
    for token in spec.replace(" ", "").split(","):
        for letter in "xmd":
            if letter in token:
                left, _, right = token.partition(letter)
                res, count = _int(left, token, what), _int(right, token, what)
                if letter == "x":
                    layers += [(res, None)] * count
                else:
                    layers.append((res, count))
                break
        else:
            layers.append((_int(token, token, what), None))
    return layers


def parse_width_string(spec: str, what: str = "custom_width_str") -> dict[int, int]:
    """``"32:256,16:512"`` -> ``{32: 256, 16: 512}``; the empty string gives ``{}``."""
    widths: dict[int, int] = {}
    if not spec or not spec.strip():
        return widths
    for token in spec.replace(" ", "").split(","):
        res, sep, width = token.partition(":")
        if not sep:
            raise ConfigError(f"bad {what} entry {token!r}: expected 'resolution:width'")
        widths[_int(res, token, what)] = _int(width, token, what)
    return widths


def width_at(base_width: int, custom: dict[int, int], res: int) -> int:
    """Channel width at ``res``: the custom entry if there is one, else the base width."""
    return custom.get(res, base_width)
