"""cvdvae: diverse face super-resolution with a hierarchical VAE prior (CVDVAE on VD-VAE).

The public names below are imported on first use, so torch-free parts of the package
(``cvdvae.seeding``, ``cvdvae.errors``, ``cvdvae.config``) can be used by the ONNX Runtime
runtime on machines without PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "CVDVAEConfig": "config", "PRESETS": "config", "preset": "config", "load_config": "config",
    "config_from_mapping": "config", "preset_values": "config",
    "CVDVAEError": "errors", "ConfigError": "errors", "WeightsError": "errors",
    "NoiseLayout": "noise_layout",
    "noise_numpy": "seeding", "noise_torch": "seeding",
    "CVDVAE": "model",
    "load_model": "weights", "resolve_weights": "weights", "model_from_weights": "weights",
    "read_weight_file": "weights", "save_safetensors": "weights",
    "bicubic_degradation": "degradation",
    "demo_model": "random_weights", "random_model": "random_weights",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'cvdvae' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
