"""The model config: official VD-VAE / CVDVAE hyper-parameter names, presets, loading.

A config is a frozen dataclass whose field names are the official hyper-parameter names
(docs/contract/config-and-weights.md), so an official yaml loads as it is. It is checked
once, when built, for everything that would otherwise fail deep inside the network
(widths that do not line up, a ``ky`` the LR encoder cannot reach, ...).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError
from .layer_string import Layer, parse_layer_string, parse_width_string, width_at

FFHQ256_ENC_BLOCKS = "256x3,256d2,128x8,128d2,64x12,64d2,32x17,32d2,16x7,16d2,8x5,8d2,4x5,4d4,1x4"
FFHQ256_DEC_BLOCKS = "1x2,4m1,4x3,8m4,8x4,16m8,16x9,32m16,32x21,64m32,64x13,128m64,128x7,256m128"


@dataclass(frozen=True)
class CVDVAEConfig:
    """Hyper-parameters that shape the network. Defaults are the openai FFHQ-256 VD-VAE."""

    # VD-VAE prior
    width: int = 512
    zdim: int = 16
    bottleneck_multiple: float = 0.25
    custom_width_str: str = ""
    enc_blocks: str = FFHQ256_ENC_BLOCKS
    dec_blocks: str = FFHQ256_DEC_BLOCKS
    no_bias_above: int = 64
    num_mixtures: int = 10
    image_size: int = 256
    image_channels: int = 3
    shift: float = -112.8666757481
    scale: float = 1.0 / 69.84780273
    # LR encoder (absent for a prior-only model)
    enc_blocks_y: str | None = None
    width_y: int | None = None
    custom_width_str_y: str = ""
    ky: int = 0
    image_size_y: int | None = None

    def __post_init__(self) -> None:
        _validate(self)

    # ------------------------------------------------------------------ derived
    @property
    def has_lr_encoder(self) -> bool:
        return self.enc_blocks_y is not None

    @property
    def scale_factor(self) -> int | None:
        """The upscaling factor (4 for 64 -> 256), None for a prior-only model."""
        return self.image_size // self.image_size_y if self.image_size_y else None

    @cached_property
    def decoder_layers(self) -> list[Layer]:
        return parse_layer_string(self.dec_blocks, "dec_blocks")

    @cached_property
    def encoder_layers(self) -> list[Layer]:
        return parse_layer_string(self.enc_blocks, "enc_blocks")

    @cached_property
    def encoder_y_layers(self) -> list[Layer]:
        return parse_layer_string(self.enc_blocks_y or "", "enc_blocks_y")

    def width_at(self, res: int) -> int:
        return width_at(self.width, parse_width_string(self.custom_width_str), res)

    def width_y_at(self, res: int) -> int:
        assert self.width_y is not None
        return width_at(self.width_y, parse_width_string(self.custom_width_str_y, "custom_width_str_y"), res)

    def bottleneck(self, width: int) -> int:
        return int(width * self.bottleneck_multiple)

    @property
    def bias_resolutions(self) -> list[int]:
        """Resolutions with a learned initial decoder state (``decoder.bias_xs``), ascending."""
        return sorted({r for r, _ in self.decoder_layers if r <= self.no_bias_above})

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> "CVDVAEConfig":
        return dataclasses.replace(self, **changes)


FIELD_NAMES = tuple(f.name for f in fields(CVDVAEConfig))


# ---------------------------------------------------------------------- presets
def _lr_preset(image_size_y: int, enc_blocks_y: str, ky: int) -> dict[str, Any]:
    return dict(image_size_y=image_size_y, enc_blocks_y=enc_blocks_y, width_y=512, ky=ky)


PRESETS: dict[str, dict[str, Any]] = {
    "ffhq256": {},
    "ffhq256-x4": _lr_preset(64, "64x12,64d2,32x17,32d2,16x7,16d2,8x5,8d2,4x5,4d4,1x4", 57),
    "ffhq256-x8": _lr_preset(32, "32x17,32d2,16x7,16d2,8x5,8d2,4x5,4d4,1x4", 43),
    "ffhq256-x16": _lr_preset(16, "16x7,16d2,8x5,8d2,4x5,4d4,1x4", 21),
    # A few-thousand-parameter model (8 -> 32) for tests and the demo.
    "tiny-x4": dict(
        width=8, zdim=2, bottleneck_multiple=0.25, num_mixtures=3, image_size=32, no_bias_above=8,
        enc_blocks="32x1,32d2,16x1,16d2,8x1,8d2,4x1,4d4,1x1",
        dec_blocks="1x1,4m1,4x1,8m4,8x1,16m8,32m16",
        enc_blocks_y="8x1,8d2,4x1,4d4,1x1", width_y=8, ky=5, image_size_y=8,
    ),
}


def preset_for_scale(scale: int) -> str:
    name = f"ffhq256-x{scale}"
    if name not in PRESETS:
        raise ConfigError(f"no preset for scale {scale}: choose 4, 8 or 16")
    return name


def preset_values(name: str) -> dict[str, Any]:
    """The hyper-parameters a preset sets (the rest are the FFHQ-256 defaults)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def preset(name: str, **overrides: Any) -> CVDVAEConfig:
    """A named config (see ``PRESETS``), optionally with some values replaced."""
    return config_from_mapping({**preset_values(name), **overrides})[0]


# ---------------------------------------------------------------------- loading
def _coerce(name: str, value: Any, kind: type) -> Any:
    if value is None:
        return None
    try:
        if kind is int and (isinstance(value, bool) or float(value) != int(value)):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config value {name}={value!r} is not a valid {kind.__name__}") from None


_FIELD_KINDS = {
    f.name: next(k for k in (int, float, str) if k.__name__ in str(f.type)) for f in fields(CVDVAEConfig)
}


def config_from_mapping(mapping: Mapping[str, Any], base: CVDVAEConfig | None = None
                        ) -> tuple[CVDVAEConfig, list[str]]:
    """Build a config from official hyper-parameter names; returns it and the ignored keys.

    Keys not given keep their value in ``base`` (the FFHQ-256 defaults when None). Keys
    that are not model hyper-parameters (an official training yaml has many) are ignored.
    """
    values = (base or CVDVAEConfig()).to_dict()
    ignored = sorted(k for k in mapping if k not in values)
    for key in values.keys() & mapping.keys():
        values[key] = _coerce(key, mapping[key], _FIELD_KINDS[key])
    if values["custom_width_str"] is None:
        values["custom_width_str"] = ""
    if values["custom_width_str_y"] is None:
        values["custom_width_str_y"] = ""
    return CVDVAEConfig(**values), ignored


def read_config_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping (JSON is YAML, so one parser serves both)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of hyper-parameter names to values")
    return data


def load_config(path: str | Path, base: CVDVAEConfig | None = None) -> CVDVAEConfig:
    return config_from_mapping(read_config_mapping(path), base)[0]


# ------------------------------------------------------------------- validation
def _validate(cfg: CVDVAEConfig) -> None:
    for name in ("width", "zdim", "num_mixtures", "image_size", "no_bias_above"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"config value {name}={getattr(cfg, name)} must be at least 1")
    if cfg.image_channels != 3:
        raise ConfigError("image_channels must be 3: the pixel head models coupled R, G, B")
    if not 0 < cfg.bottleneck_multiple <= 1 or cfg.bottleneck(min(_all_widths(cfg))) < 1:
        raise ConfigError(f"bottleneck_multiple={cfg.bottleneck_multiple} leaves a block with no channels")
    if cfg.scale == 0:
        raise ConfigError("scale must not be 0")
    _validate_encoder(cfg.encoder_layers, cfg.image_size, cfg.width, cfg.width_at, "enc_blocks")
    _validate_decoder(cfg)
    if cfg.has_lr_encoder:
        _validate_lr_encoder(cfg)
    elif cfg.ky or cfg.width_y is not None or cfg.image_size_y is not None:
        raise ConfigError("ky, width_y and image_size_y need enc_blocks_y (the LR encoder)")


def _all_widths(cfg: CVDVAEConfig) -> list[int]:
    custom = list(parse_width_string(cfg.custom_width_str).values())
    custom_y = list(parse_width_string(cfg.custom_width_str_y, "custom_width_str_y").values())
    return [cfg.width, *custom, *([cfg.width_y] if cfg.width_y else []), *custom_y]


def encoder_resolutions(layers: list[Layer], input_size: int) -> list[int]:
    """Resolutions an encoder stores activations for: its input size, then each block output."""
    out, res = [input_size], input_size
    for _, down in layers:
        res = res // down if down else res
        out.append(res)
    return sorted(set(out), reverse=True)


def _validate_encoder(layers: list[Layer], size: int, in_width: int, width_fn, what: str) -> None:
    if width_fn(size) != in_width:
        raise ConfigError(f"{what}: the width at the input resolution {size} must equal the base width {in_width}")
    res = size
    for i, (block_res, down) in enumerate(layers):
        if block_res != res:
            raise ConfigError(f"{what}: block {i} is at resolution {block_res} but the activations are {res}x{res}")
        if down:
            if res % down:
                raise ConfigError(f"{what}: block {i} pools {res}x{res} by {down}, which does not divide it")
            if width_fn(res // down) < width_fn(res):
                raise ConfigError(f"{what}: width shrinks from {width_fn(res)} at {res} to "
                                  f"{width_fn(res // down)} at {res // down}; channels can only be zero-padded")
            res //= down


def _validate_decoder(cfg: CVDVAEConfig) -> None:
    layers = cfg.decoder_layers
    if layers[-1][0] != cfg.image_size:
        raise ConfigError(f"dec_blocks must end at image_size {cfg.image_size}, not {layers[-1][0]}")
    if cfg.width_at(cfg.image_size) != cfg.width:
        raise ConfigError(f"custom_width_str: the width at image_size {cfg.image_size} must equal width {cfg.width}")
    known = set(cfg.bias_resolutions)
    for i, (res, mixin) in enumerate(layers):
        if mixin is not None:
            if mixin not in known:
                raise ConfigError(f"dec_blocks: block {i} mixes in resolution {mixin}, which no earlier block has")
            if res % mixin:
                raise ConfigError(f"dec_blocks: block {i} at {res} cannot upsample its mixin {mixin} by an integer")
            if cfg.width_at(mixin) < cfg.width_at(res):
                raise ConfigError(f"dec_blocks: block {i} needs {cfg.width_at(res)} channels from its mixin "
                                  f"{mixin}, which has only {cfg.width_at(mixin)}")
        known.add(res)


def _validate_lr_encoder(cfg: CVDVAEConfig) -> None:
    if cfg.width_y is None or cfg.image_size_y is None:
        raise ConfigError("an LR encoder needs width_y and image_size_y")
    if cfg.image_size_y < 1 or cfg.image_size % cfg.image_size_y:
        raise ConfigError(f"image_size_y {cfg.image_size_y} must divide image_size {cfg.image_size}")
    _validate_encoder(cfg.encoder_y_layers, cfg.image_size_y, cfg.width_y, cfg.width_y_at, "enc_blocks_y")
    n_blocks = len(cfg.decoder_layers)
    if not 1 <= cfg.ky <= n_blocks:
        raise ConfigError(f"ky={cfg.ky} must be between 1 and the number of decoder blocks ({n_blocks})")
    reachable = encoder_resolutions(cfg.encoder_y_layers, cfg.image_size_y)
    for i, (res, _) in enumerate(cfg.decoder_layers[: cfg.ky]):
        if res not in reachable:
            raise ConfigError(f"ky={cfg.ky}: decoder block {i} at resolution {res} is conditioned, but the LR "
                              f"encoder only produces resolutions {reachable}")
        if cfg.width_y_at(res) != cfg.width_at(res):
            raise ConfigError(f"ky={cfg.ky}: decoder block {i} needs LR activations with {cfg.width_at(res)} "
                              f"channels at {res}, the LR encoder has {cfg.width_y_at(res)}")
