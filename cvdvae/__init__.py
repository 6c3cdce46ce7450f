"""cvdvae: diverse face super-resolution with a hierarchical VAE prior (CVDVAE on VD-VAE).

    from cvdvae import Pipeline

    pipe = Pipeline.from_pretrained("engines/x4-fp32")
    out = pipe("face.png", n=8, seed=0)          # out.samples: uint8 [1, 8, 256, 256, 3]

This package is the model and its maths, at the bottom of the layers (``export`` and
``runtime`` sit above it). The public names below are imported on first use, so torch-free
parts (``cvdvae.seeding``, ``cvdvae.errors``, ``cvdvae.config``) serve the runtime on machines
without PyTorch.

The front door. ``Pipeline`` and its output types are the one way up: they live in
``runtime.pipeline`` and are re-exported here, lazily (``_FROM_RUNTIME``), so that
``from cvdvae import Pipeline`` is the library's entry. It is the only upward import in the
project, and tests/test_layout.py knows it by name; no other module of ``cvdvae``, ``export``
or ``runtime`` imports this package's ``__init__`` (they import its modules), so the entry
closes no circle. The errors a caller catches live in ``cvdvae.errors``, down here.
"""

from __future__ import annotations

import importlib
from typing import Any

from .version import __version__

_PUBLIC = {
    "CVDVAEConfig": "config", "PRESETS": "config", "preset": "config", "load_config": "config",
    "config_from_mapping": "config", "preset_values": "config",
    "CVDVAEError": "errors", "ConfigError": "errors", "WeightsError": "errors", "InputError": "errors",
    "NoFaceFound": "errors", "NonFiniteSamples": "errors", "MissingExtra": "errors",
    "NoiseLayout": "noise_layout",
    "noise_numpy": "seeding", "noise_torch": "seeding",
    "CVDVAE": "model",
    "load_model": "weights", "resolve_weights": "weights", "model_from_weights": "weights",
    "read_weight_file": "weights", "save_safetensors": "weights",
    "bicubic_degradation": "degradation",
    "demo_model": "random_weights", "random_model": "random_weights",
}
_FROM_RUNTIME = ("Pipeline", "PipelineOutput", "FacesOutput")  # the front door (above)

__all__ = ["__version__", *_PUBLIC, *_FROM_RUNTIME]


def __getattr__(name: str) -> Any:
    if name in _FROM_RUNTIME:
        return getattr(importlib.import_module("runtime.pipeline"), name)
    if name not in _PUBLIC:
        raise AttributeError(f"module 'cvdvae' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
