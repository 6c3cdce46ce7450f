"""What an exported graph says about itself: ``metadata_props`` in the ONNX and ``meta.json``
(written through ``runtime.model_files``, the folder format's one owner).

Both hold the config, ``D``, the per-block noise offsets, scale, precision and package
version. A file cannot contain its own hash, so the ONNX carries ``graph_sha256`` (of its
graph before metadata is added) while ``meta.json`` also carries ``onnx_sha256``, the hash
of the file on disk, which the runtime checks before loading.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import onnx

from cvdvae.version import __version__
from cvdvae.model import CVDVAE
from runtime.model_files import META_FORMAT


def graph_metadata(model: CVDVAE, precision: str, consistent: bool, graph_sha256: str) -> dict[str, Any]:
    cfg, layout = model.config, model.noise_layout
    return {
        "format": META_FORMAT,
        "cvdvae_version": __version__,
        "config": cfg.to_dict(),
        "scale": cfg.scale_factor,
        "lr_size": cfg.image_size_y,
        "hr_size": cfg.image_size,
        "noise_dim": layout.dim,
        "noise_offsets": layout.block_offsets(),
        "ky": cfg.ky,
        "conditional": cfg.has_lr_encoder,
        "precision": precision,
        "consistent": consistent,
        "inputs": {**({"lr": ["B", 3, cfg.image_size_y, cfg.image_size_y]} if cfg.has_lr_encoder else {}),
                   "noise": ["B", "n", layout.dim], "temperature": ["B", "n"]},
        "outputs": {"sr": ["B", "n", 3, cfg.image_size, cfg.image_size], "non_finite": ["B", "n"]},
        "graph_sha256": graph_sha256,
    }


def stamp(proto: onnx.ModelProto, metadata: dict[str, Any]) -> None:
    """Write ``metadata`` into ``metadata_props`` (strings; structures as JSON)."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)


def graph_sha256(proto: onnx.ModelProto) -> str:
    return hashlib.sha256(proto.graph.SerializeToString()).hexdigest()

