"""Shared test helpers: small configs, random models, the official-sampler fixture."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cvdvae.config import CVDVAEConfig, config_from_mapping, preset

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CVDVAE_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"

# Widths that change per resolution (so channels are padded and mixins sliced), 4
# mixtures, and a ky that cuts inside resolution 8.
CUSTOM = dict(
    width=8, zdim=3, bottleneck_multiple=0.5, custom_width_str="8:12,4:12,1:16",
    enc_blocks="16x1,16d2,8x1,8d2,4x1,4d4,1x1", dec_blocks="1x1,4m1,4x1,8m4,8x2,16m8,16x1",
    no_bias_above=8, num_mixtures=4, image_size=16,
    enc_blocks_y="8x1,8d2,4d4,1x1", width_y=12, custom_width_str_y="1:16", ky=5, image_size_y=8,
)


def custom_config(**changes) -> CVDVAEConfig:
    return config_from_mapping({**CUSTOM, **changes})[0]


@pytest.fixture(scope="session")
def tiny_config() -> CVDVAEConfig:
    return preset("tiny-x4")


def make_inputs(cfg: CVDVAEConfig, batch: int, n: int, seed: int = 0, t: float = 0.8):
    gen = torch.Generator().manual_seed(seed)
    size = cfg.image_size_y
    lr = torch.randint(0, 256, (batch, 3, size, size), generator=gen).float() if size else None
    from cvdvae.noise_layout import NoiseLayout

    noise = torch.randn(batch, n, NoiseLayout.from_config(cfg).dim, generator=gen)
    temperature = torch.full((batch, n), t)
    return lr, noise, temperature


def require_shared(*paths: Path) -> None:
    """Skip without the shared oracle files; in CI (where they must be) fail instead."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        message = f"shared oracle files not found ({', '.join(missing)}); set CVDVAE_SHARED"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)


@pytest.fixture(scope="session")
def official_case():
    """The official CVDVAE sampler's outputs for recorded noise (shared/fixtures)."""
    paths = [FIXTURES / n for n in ("public.ckpt", "public.yaml", "public_case.npz")]
    require_shared(*paths)
    case = dict(np.load(paths[2]))
    return paths[0], paths[1], case
