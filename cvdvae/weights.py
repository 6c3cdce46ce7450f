"""Reading and writing weight files without executing code (docs/contract/config-and-weights.md).

Three formats load with strict semantics (every expected tensor present, no stray ones,
equal shapes):

* ``.th`` / ``.pt`` / ``.pth``: the openai VD-VAE state dict (optional ``module.`` prefix);
* ``.ckpt``: the official CVDVAE Lightning checkpoint (``state_dict`` under ``cvae.``,
  ``hyper_parameters`` with ``enc_blocks_y``, ``ky``, ``image_size_y``);
* ``.safetensors``: ours; official key names, the config as JSON in the metadata.

Pickles are read with ``torch.load(weights_only=True)`` only. Whatever the model does not
use for sampling (the HR encoder, the q(z|x) heads) must still be in the file, so a file is
checked against the full model before the inference subset is taken.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .config import FIELD_NAMES, CVDVAEConfig, config_from_mapping, preset_values, read_config_mapping
from .errors import CVDVAEError, WeightsError
from .fileio import atomic_path
from .model import CVDVAE

CONFIG_METADATA_KEY = "cvdvae_config"
PICKLE_SUFFIXES = (".th", ".pt", ".pth")
SUFFIXES = (*PICKLE_SUFFIXES, ".ckpt", ".safetensors")
SHOWN = 5  # names listed per kind of mismatch; the count is always given


@dataclass
class WeightFile:
    """Tensors under official names (prefixes stripped) and the config values the file carries."""

    path: Path
    tensors: dict[str, torch.Tensor]
    config_values: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------- reading
def read_weight_file(path: str | Path) -> WeightFile:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weight file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix == ".ckpt":
        return _read_lightning(path)
    if suffix in PICKLE_SUFFIXES:
        return _read_state_dict(path)
    raise WeightsError(f"{path}: unknown weight format {suffix!r}; expected one of {', '.join(SUFFIXES)}")


def _torch_load(path: Path) -> Any:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04" and not magic.startswith(b"\x80"):
        raise WeightsError(f"{path}: not a readable PyTorch file (neither a torch.save archive nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).partition("WeightsUnpickler error:")[2].strip().split("\n")[0] or "unsupported content"
        raise WeightsError(f"{path}: refused, it needs unpickling of objects other than tensors and plain "
                           f"containers, which could run code ({reason})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise WeightsError(f"{path}: not a readable PyTorch file ({str(err).splitlines()[0][:160]})") from None


def _tensor_dict(obj: Any, path: Path, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: {what} is a {type(obj).__name__}, expected a mapping of names to tensors")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{path}: {what} holds {len(bad)} entries that are not tensors, e.g. {bad[:SHOWN]}")
    return dict(obj)


def _strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if tensors and all(k.startswith(prefix) for k in tensors):
        return {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def _read_state_dict(path: Path) -> WeightFile:
    tensors = _tensor_dict(_torch_load(path), path, "the state dict")
    return WeightFile(path, _strip_prefix(tensors, "module."))


def _read_lightning(path: Path) -> WeightFile:
    ckpt = _torch_load(path)
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise WeightsError(f"{path}: not a Lightning checkpoint (no 'state_dict' entry)")
    state = _tensor_dict(ckpt["state_dict"], path, "'state_dict'")
    if not all(k.startswith("cvae.") for k in state):
        raise WeightsError(f"{path}: not a CVDVAE checkpoint: 'state_dict' keys must start with 'cvae.'")
    tensors = _strip_prefix(state, "cvae.")
    hparams = ckpt.get("hyper_parameters") or {}
    values = {k: v for k, v in dict(hparams).items() if k in FIELD_NAMES}
    values.update(_config_from_tensors(tensors))
    return WeightFile(path, tensors, values)


def _config_from_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What the tensors of a checkpoint say for certain: normaliser, LR width, ky."""
    values: dict[str, Any] = {}
    for name in ("shift", "scale"):
        if name in tensors and tensors[name].numel() == 1:
            values[name] = float(tensors[name].reshape(()))
    if "encoder_y.in_conv.weight" in tensors:
        values["width_y"] = int(tensors["encoder_y.in_conv.weight"].shape[0])
    heads = {k.split(".")[2] for k in tensors if k.startswith("decoder.dec_blocks.") and ".enc_y." in k}
    if heads:
        values["ky"] = len(heads)
    return values


def _read_safetensors(path: Path) -> WeightFile:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path}: not a readable safetensors file ({err})") from None
    values: dict[str, Any] = {}
    if CONFIG_METADATA_KEY in metadata:
        try:
            values = dict(json.loads(metadata[CONFIG_METADATA_KEY]))
        except (json.JSONDecodeError, TypeError, ValueError):
            raise WeightsError(f"{path}: metadata '{CONFIG_METADATA_KEY}' is not a JSON mapping") from None
    return WeightFile(path, tensors, values)


# ------------------------------------------------------------------- checking
def expected_shapes(config: CVDVAEConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the full model (HR encoder and q(z|x) heads included), built on meta."""
    with torch.device("meta"):
        model = CVDVAE(config, with_posterior=True)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_tensors(expected: Mapping[str, tuple[int, ...]], tensors: Mapping[str, torch.Tensor],
                  source: str) -> None:
    """Raise one error naming the first few missing, unexpected and mis-shaped tensors."""
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    misshaped = [f"{k}: file {list(tensors[k].shape)} vs model {list(s)}"
                 for k, s in expected.items() if k in tensors and tuple(tensors[k].shape) != s]
    problems = [f"{len(names)} {what} ({', '.join(names[:SHOWN])}{', ...' if len(names) > SHOWN else ''})"
                for what, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
                if names]
    if problems:
        raise WeightsError(f"{source} does not match the model config: {'; '.join(problems)}. "
                           "Check the preset or config against the checkpoint")


# -------------------------------------------------------------------- loading
@dataclass
class ResolvedWeights:
    config: CVDVAEConfig
    tensors: dict[str, torch.Tensor]
    ignored_config_keys: list[str]


def resolve_weights(checkpoint: str | Path | None = None, vdvae: str | Path | None = None,
                    config: str | Path | CVDVAEConfig | None = None, preset: str | None = None
                    ) -> ResolvedWeights:
    """Config and full tensor set from the given files, checked against each other.

    Config precedence: preset < the checkpoint's own values < an explicit config.
    Tensors: the VD-VAE file first, then the checkpoint (which wins where both have one).
    """
    if checkpoint is None and vdvae is None:
        raise CVDVAEError("no weights given: name a checkpoint and/or a VD-VAE file")
    files = [read_weight_file(p) for p in (vdvae, checkpoint) if p is not None]
    if isinstance(config, CVDVAEConfig):
        cfg, ignored = config, []
    else:
        values: dict[str, Any] = preset_values(preset) if preset else {}
        for f in files:
            values.update(f.config_values)
        if config is not None:
            values.update(read_config_mapping(config))
        cfg, ignored = config_from_mapping(values)
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(f.tensors)
    tensors.setdefault("shift", torch.full((1, 1, 1), cfg.shift))
    tensors.setdefault("scale", torch.full((1, 1, 1), cfg.scale))
    check_tensors(expected_shapes(cfg), tensors, " + ".join(str(f.path) for f in files))
    return ResolvedWeights(cfg, tensors, ignored)


def model_from_weights(resolved: ResolvedWeights, *, with_posterior: bool = False,
                       device: str | torch.device = "cpu") -> CVDVAE:
    """Build the model and load exactly the tensors it has (all of them were checked)."""
    model = CVDVAE(resolved.config, with_posterior=with_posterior)
    wanted = model.state_dict().keys()
    model.load_state_dict({k: resolved.tensors[k] for k in wanted}, strict=True)
    return model.to(device).eval()


def load_model(checkpoint: str | Path | None = None, vdvae: str | Path | None = None,
               config: str | Path | CVDVAEConfig | None = None, preset: str | None = None, *,
               with_posterior: bool = False, device: str | torch.device = "cpu") -> CVDVAE:
    """Load any accepted weight file(s) into an eval-mode model."""
    resolved = resolve_weights(checkpoint, vdvae, config, preset)
    return model_from_weights(resolved, with_posterior=with_posterior, device=device)


# -------------------------------------------------------------------- writing
def save_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor], config: CVDVAEConfig) -> None:
    """Write our format atomically: a crash never leaves a partial file at ``path``."""
    from safetensors.torch import save_file

    payload = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(payload, str(tmp), metadata={CONFIG_METADATA_KEY: config.to_json(), "format": "pt"})


def is_lr_encoder_key(name: str) -> bool:
    """Tensors the LR encoder owns (trained by cvdvae-train); the rest is the VD-VAE prior."""
    return name.startswith("encoder_y.") or ".enc_y." in name


def load_prior_into(model: CVDVAE, path: str | Path) -> None:
    """Load a VD-VAE (or full CVDVAE) file's prior tensors into ``model``, strictly.

    Every prior tensor of the full model must be in the file with its shape; the file's LR
    encoder tensors, if any, are ignored (a new LR encoder keeps its initialisation).
    """
    weights = read_weight_file(path)
    prior = {k: s for k, s in expected_shapes(model.config).items()
             if not is_lr_encoder_key(k) and k not in ("shift", "scale")}
    tensors = {k: v for k, v in weights.tensors.items() if not is_lr_encoder_key(k) and k not in ("shift", "scale")}
    check_tensors(prior, tensors, str(path))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected and all(is_lr_encoder_key(k) or k in ("shift", "scale") for k in missing)
