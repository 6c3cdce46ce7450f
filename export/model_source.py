"""Which model to export: given weights, weights found in ``$CVDVAE_HOME``, the demo model, or
the VD-VAE prior alone (asked for, or recognised: weights without an LR encoder)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cvdvae.config import CVDVAEConfig, preset, preset_for_scale
from cvdvae.errors import CVDVAEError
from cvdvae.hub.assets import fetch_hint, fetched_file
from cvdvae.hub.home import cvdvae_home
from cvdvae.model import CVDVAE
from cvdvae.random_weights import DEMO_PRESET, demo_model
from cvdvae.weights import ResolvedWeights, is_lr_encoder_key, model_from_weights, read_weight_file, resolve_weights

PRIOR_ASSET = "vdvae-ffhq256"


@dataclass(frozen=True)
class ModelChoice:
    """Where the weights come from (the first that applies): the demo model; the prior; weight files."""

    demo: bool = False
    prior: bool = False                # the unconditional VD-VAE (docs/contract/graph.md, the unconditional graph)
    checkpoint: Path | None = None     # .ckpt, .safetensors or .th/.pt/.pth
    vdvae: Path | None = None          # the VD-VAE prior's weights, when the checkpoint lacks them
    config: Path | None = None
    preset: str | None = None
    scale: int = 4                     # picks ffhq256-x{scale} when no preset is named
    consistent: bool = False           # the LR-consistency projection will be baked in


@dataclass
class ModelSource:
    model: CVDVAE
    name: str          # "x4", "demo-x4", "vdvae-ffhq256", ...
    description: str
    resolved: ResolvedWeights | None = None
    note: str | None = None  # what was recognised about the weights, for the user


def home_candidates(scale: int) -> list[Path]:
    """The files docs/guides/export.md ("Weights") tells users to put in $CVDVAE_HOME, in the order tried."""
    home = cvdvae_home()
    return [home / f"cvdvae-x{scale}.safetensors", home / f"cvdvae-x{scale}.ckpt"]


def model_source(choice: ModelChoice) -> ModelSource:
    """The model ``choice`` names, its weights checked strictly."""
    if choice.demo:
        if choice.checkpoint or choice.vdvae or choice.prior:
            raise CVDVAEError("the demo model is built in: name no weight files and no prior with it")
        model = demo_model()
        return ModelSource(model, f"demo-x{model.config.scale_factor}", f"built-in untrained {DEMO_PRESET} demo model")
    if choice.prior or (choice.vdvae is not None and choice.checkpoint is None):
        return prior_source(choice)
    checkpoint = choice.checkpoint or _find_in_home(choice.scale)
    if choice.vdvae is None and is_prior_only(checkpoint):
        source = prior_source(ModelChoice(prior=True, checkpoint=checkpoint, config=choice.config,
                                          preset=choice.preset, consistent=choice.consistent))
        source.note = (f"{checkpoint} holds a VD-VAE prior alone (no LR encoder): exported as the unconditional "
                       "graph, which draws faces from noise; super-resolution needs an LR encoder (cvdvae train)")
        return source
    resolved = resolve_weights(checkpoint, choice.vdvae, choice.config, choice.preset or preset_for_scale(choice.scale))
    files = " + ".join(str(p) for p in (choice.vdvae, checkpoint) if p)
    return ModelSource(model_from_weights(resolved), f"x{resolved.config.scale_factor}", files, resolved)


def is_prior_only(path: Path) -> bool:
    """Whether a weight file holds VD-VAE tensors and no LR encoder (an openai ``.th``, or one
    converted from it): a prior, whatever the scale asked for."""
    weights = read_weight_file(path)
    has_prior = any(key.startswith("decoder.") for key in weights.tensors)
    return has_prior and not any(is_lr_encoder_key(key) for key in weights.tensors)


def prior_source(choice: ModelChoice) -> ModelSource:
    """The unconditional VD-VAE: every group from the prior (docs/contract/graph.md, the unconditional graph)."""
    if choice.consistent:
        raise CVDVAEError("the consistency projection needs an LR image to be consistent with; the prior has none")
    vdvae = choice.vdvae
    if vdvae is None and choice.checkpoint is None:
        vdvae = fetched_file(PRIOR_ASSET)
        if vdvae is None:
            raise CVDVAEError(f"no VD-VAE prior in {cvdvae_home()} ($CVDVAE_HOME): run `{fetch_hint(PRIOR_ASSET)}` "
                              "(or name the prior's weight file)")
    resolved = resolve_weights(choice.checkpoint, vdvae, choice.config, choice.preset or "ffhq256")
    if resolved.config.has_lr_encoder:
        raise CVDVAEError("these weights hold an LR encoder: export the conditional graph from them, not the prior")
    files = " + ".join(str(p) for p in (vdvae, choice.checkpoint) if p)
    return ModelSource(model_from_weights(resolved), prior_name(resolved.config), f"VD-VAE prior {files}", resolved)


def prior_name(config: CVDVAEConfig) -> str:
    return PRIOR_ASSET if config == preset("ffhq256") else f"prior{config.image_size}"


def _find_in_home(scale: int) -> Path:
    for path in home_candidates(scale):
        if path.is_file():
            return path
    raise CVDVAEError(
        f"no weights for x{scale}: pass {{checkpoint}}, or put cvdvae-x{scale}.safetensors in "
        f"{cvdvae_home()} ($CVDVAE_HOME). No LR encoder is public: train one with `cvdvae train --scale {scale}` "
        f"(its prior: `{fetch_hint(PRIOR_ASSET)}`); faces from the prior alone: {{prior}}; or the built-in demo "
        "model: {demo}", checkpoint="FILE", prior=True, demo=True)
