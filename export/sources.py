"""Which model to export: given weights, weights found in ``$CVDVAE_HOME``, the demo model, or
the VD-VAE prior alone (``--prior``, or weights without an LR encoder)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from cvdvae.config import CVDVAEConfig, preset, preset_for_scale
from cvdvae.errors import CVDVAEError
from cvdvae.fetch import fetch_hint, fetched_file
from cvdvae.fileio import cvdvae_home
from cvdvae.model import CVDVAE
from cvdvae.random_weights import DEMO_PRESET, demo_model
from cvdvae.weights import ResolvedWeights, model_from_weights, resolve_weights

PRIOR_ASSET = "vdvae-ffhq256"


def home_candidates(scale: int) -> list[Path]:
    """The files README.md tells users to put in $CVDVAE_HOME, in the order they are tried."""
    home = cvdvae_home()
    return [home / f"cvdvae-x{scale}.safetensors", home / f"cvdvae-x{scale}.ckpt"]


@dataclass
class ModelSource:
    model: CVDVAE
    name: str          # "x4", "demo-x4", "vdvae-ffhq256", ...
    description: str
    resolved: ResolvedWeights | None = None


def model_source(args: argparse.Namespace) -> ModelSource:
    """Resolve --demo / --prior / --checkpoint / --vdvae / --config / --preset / --scale into a model."""
    if args.demo:
        if args.checkpoint or args.vdvae or args.prior:
            raise CVDVAEError("--demo uses the built-in untrained model: drop --checkpoint/--vdvae/--prior")
        model = demo_model()
        return ModelSource(model, f"demo-x{model.config.scale_factor}", f"built-in untrained {DEMO_PRESET} demo model")
    if args.prior or (args.vdvae is not None and args.checkpoint is None):
        return prior_source(args)
    checkpoint = args.checkpoint or _find_in_home(args.scale)
    resolved = resolve_weights(checkpoint, args.vdvae, args.config, args.preset or preset_for_scale(args.scale))
    files = " + ".join(str(p) for p in (args.vdvae, checkpoint) if p)
    return ModelSource(model_from_weights(resolved), f"x{resolved.config.scale_factor}", files, resolved)


def prior_source(args: argparse.Namespace) -> ModelSource:
    """The unconditional VD-VAE: every group from the prior (contracts.md 3.1)."""
    if args.consistent:
        raise CVDVAEError("--consistent needs an LR image to be consistent with; the prior has none")
    vdvae = args.vdvae
    if vdvae is None and args.checkpoint is None:
        vdvae = fetched_file(PRIOR_ASSET)
        if vdvae is None:
            raise CVDVAEError(f"no VD-VAE prior in {cvdvae_home()} ($CVDVAE_HOME): run `{fetch_hint(PRIOR_ASSET)}` "
                              "(or pass --vdvae FILE)")
    resolved = resolve_weights(args.checkpoint, vdvae, args.config, args.preset or "ffhq256")
    if resolved.config.has_lr_encoder:
        raise CVDVAEError("these weights hold an LR encoder: export them without --prior (the conditional graph)")
    files = " + ".join(str(p) for p in (vdvae, args.checkpoint) if p)
    return ModelSource(model_from_weights(resolved), prior_name(resolved.config), f"VD-VAE prior {files}", resolved)


def prior_name(config: CVDVAEConfig) -> str:
    return PRIOR_ASSET if config == preset("ffhq256") else f"prior{config.image_size}"


def _find_in_home(scale: int) -> Path:
    for path in home_candidates(scale):
        if path.is_file():
            return path
    raise CVDVAEError(
        f"no weights for x{scale}: pass --checkpoint FILE, or put cvdvae-x{scale}.safetensors in {cvdvae_home()} "
        f"($CVDVAE_HOME). No LR encoder is public: train one with `cvdvae train --scale {scale}` (its prior: "
        f"`{fetch_hint(PRIOR_ASSET)}`); faces from the prior alone: `cvdvae export --prior`; or --demo")
