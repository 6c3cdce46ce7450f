"""Which model to export: given weights, weights found in ``$CVDVAE_HOME``, or the demo model."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from cvdvae.config import preset_for_scale
from cvdvae.errors import CVDVAEError
from cvdvae.fileio import cvdvae_home
from cvdvae.model import CVDVAE
from cvdvae.random_weights import DEMO_PRESET, demo_model
from cvdvae.weights import ResolvedWeights, model_from_weights, resolve_weights

VDVAE_FILE = "ffhq256-iter-1700000-model-ema.th"


def home_candidates(scale: int) -> list[Path]:
    """The files README.md tells users to put in $CVDVAE_HOME, in the order they are tried."""
    home = cvdvae_home()
    return [home / f"cvdvae-x{scale}.safetensors", home / f"cvdvae-x{scale}.ckpt"]


@dataclass
class ModelSource:
    model: CVDVAE
    name: str          # "x4", "demo-x4", ...
    description: str
    resolved: ResolvedWeights | None = None


def model_source(args: argparse.Namespace) -> ModelSource:
    """Resolve --demo / --checkpoint / --vdvae / --config / --preset / --scale into a model."""
    if args.demo:
        if args.checkpoint or args.vdvae:
            raise CVDVAEError("--demo uses the built-in untrained model: drop --checkpoint/--vdvae")
        model = demo_model()
        return ModelSource(model, f"demo-x{model.config.scale_factor}", f"built-in untrained {DEMO_PRESET} demo model")
    preset = args.preset or preset_for_scale(args.scale)
    checkpoint, vdvae = args.checkpoint, args.vdvae
    if checkpoint is None and vdvae is None:
        checkpoint = _find_in_home(args.scale)
    if checkpoint is None and vdvae is not None:
        raise CVDVAEError("--vdvae gives only the prior; also pass --checkpoint with the trained LR encoder "
                          "(train one with cvdvae-train)")
    resolved = resolve_weights(checkpoint, vdvae, args.config, preset)
    if not resolved.config.has_lr_encoder:
        raise CVDVAEError(f"{checkpoint} holds a prior-only VD-VAE; the export needs a trained LR encoder "
                          "(cvdvae-train), passed with --checkpoint")
    model = model_from_weights(resolved)
    files = " + ".join(str(p) for p in (vdvae, checkpoint) if p)
    return ModelSource(model, f"x{resolved.config.scale_factor}", files, resolved)


def _find_in_home(scale: int) -> Path:
    for path in home_candidates(scale):
        if path.is_file():
            return path
    home = cvdvae_home()
    raise CVDVAEError(
        f"no weights for x{scale}: pass --checkpoint FILE (plus --vdvae {VDVAE_FILE} when the checkpoint "
        f"holds only the LR encoder), or put cvdvae-x{scale}.safetensors in {home} ($CVDVAE_HOME), "
        f"or use --demo for the built-in untrained demo model")
