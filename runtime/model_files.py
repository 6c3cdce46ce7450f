"""The export folder: its file names and ``meta.json``, written by ``export`` and read here.

A folder holds ``model.onnx`` (the graph, docs/contract/graph.md), ``meta.json`` (what the
graph is: sizes, ``D``, precision, the ONNX file's sha256, an engine's record) and, when
built, ``engine.plan``. ``meta.json`` carries a format number; a reader refuses one it does
not know, naming the cvdvae version that wrote it. Format 2 graphs have the ``non_finite``
output; format 1 graphs (cvdvae 0.1) lack it and still run, their NaN/Inf seen only in ``sr``.

``MODEL`` (what a user points at) is an ``engine.plan``, a ``model.onnx`` or the folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from cvdvae.version import __version__
from cvdvae.errors import CVDVAEError
from cvdvae.fileio import atomic_path
from cvdvae.noise_recipe import NoiseLevels

from .compiled_cache import cache_folder, remembered_sha256

ONNX_NAME, META_NAME, PLAN_NAME = "model.onnx", "meta.json", "engine.plan"
META_FORMAT = 2  # bump when meta.json changes in a way an older reader would misread
READABLE_FORMATS = (1, 2)
REQUIRED = ("lr_size", "hr_size", "scale", "noise_dim", "precision")


@dataclass(frozen=True)
class ModelShape:
    """What a model takes and gives, whatever runs it."""

    conditional: bool        # takes LR images (False: a prior-only VD-VAE draws from noise alone)
    lr_size: int | None
    hr_size: int
    scale: int | None
    consistent: bool = False  # the LR-consistency projection is part of the graph
    levels: NoiseLevels | None = None  # each decoder block's level (None: the files do not say)


@dataclass(frozen=True)
class ModelFiles:
    folder: Path
    meta: dict[str, Any]
    onnx: Path | None
    plan: Path | None
    requested: str  # "plan", "onnx" or "folder": what the user pointed at

    @property
    def conditional(self) -> bool:
        """Whether the graph takes LR images (False: a prior-only VD-VAE, the unconditional graph of
        docs/contract/graph.md)."""
        return bool(self.meta.get("conditional", True))

    @property
    def lr_size(self) -> int | None:
        """The LR input's size (None for a prior-only model)."""
        return None if self.meta["lr_size"] is None else int(self.meta["lr_size"])

    @property
    def hr_size(self) -> int:
        return int(self.meta["hr_size"])

    @property
    def scale(self) -> int | None:
        return None if self.meta["scale"] is None else int(self.meta["scale"])

    @property
    def noise_dim(self) -> int:
        return int(self.meta["noise_dim"])

    @property
    def precision(self) -> str:
        return str(self.meta["precision"])

    @property
    def reports_non_finite(self) -> bool:
        """Whether the graph counts each sample's NaN/Inf itself (the ``non_finite`` output)."""
        return "non_finite" in self.meta.get("outputs", {})

    @property
    def shape(self) -> ModelShape:
        return ModelShape(self.conditional, self.lr_size, self.hr_size, self.scale,
                          bool(self.meta.get("consistent", False)), self.levels)

    @cached_property
    def levels(self) -> NoiseLevels | None:
        """Each decoder block's level and noise slice, from the config meta.json holds (None without one)."""
        from cvdvae.config import config_from_mapping

        if not isinstance(self.meta.get("config"), dict):
            return None
        levels = NoiseLevels.from_config(config_from_mapping(self.meta["config"])[0])
        return levels if levels.dim == self.noise_dim else None

    @property
    def model_id(self) -> str:
        """A short name for this graph: its file's sha256 prefix."""
        return f"cvdvae-{str(self.meta.get('onnx_sha256', 'model'))[:12]}"

    def activation_bytes_per_sample(self, bytes_per_value: int = 4) -> int:
        """A sample keeps about eight width x H x W tensors alive at its largest resolution
        (FFHQ-256 in float32: 1.1 GB)."""
        width = int(self.meta.get("config", {}).get("width", 512))
        return 8 * bytes_per_value * width * self.hr_size**2


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    """``meta.json``, stamped with this format and version, written atomically."""
    stamped = {"format": META_FORMAT, **meta}
    stamped["format"] = META_FORMAT
    stamped.setdefault("cvdvae_version", __version__)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(stamped, indent=2) + "\n")


def read_meta(path: Path) -> dict[str, Any]:
    """``meta.json``, checked: readable, of a known format, with the sizes every reader needs."""
    if not path.is_file():
        raise CVDVAEError(f"{path} not found: the model must come from cvdvae export (re-run it)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CVDVAEError(f"{path} is not readable JSON ({err}); re-run cvdvae export") from None
    if not isinstance(meta, dict):
        raise CVDVAEError(f"{path} is not a JSON object; re-run cvdvae export")
    written_by = f"cvdvae {meta['cvdvae_version']}" if "cvdvae_version" in meta else "an unknown cvdvae"
    if meta.get("format") not in READABLE_FORMATS:
        found = "no format number" if "format" not in meta else f"format {meta['format']!r}"
        readable = " and ".join(map(str, READABLE_FORMATS))
        raise CVDVAEError(f"{path} has {found} (written by {written_by}); this cvdvae {__version__} reads "
                          f"formats {readable}: re-export the model with this version, or use the one that "
                          "wrote it")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise CVDVAEError(f"{path} lacks {', '.join(missing)}; re-run cvdvae export")
    return meta


def locate(model: str | Path) -> ModelFiles:
    path = Path(model)
    if path.is_dir():
        folder, requested = path, "folder"
    elif path.is_file() and path.suffix in (".plan", ".engine", ".onnx"):
        folder, requested = path.parent, "onnx" if path.suffix == ".onnx" else "plan"
    elif not path.exists():
        raise CVDVAEError(f"model not found: {path} (give an engine.plan, a model.onnx or an export folder)")
    else:
        raise CVDVAEError(f"{path}: expected an engine.plan, a model.onnx or an export folder")
    meta = read_meta(folder / META_NAME)
    onnx = path if requested == "onnx" else folder / ONNX_NAME
    plan = path if requested == "plan" else folder / PLAN_NAME
    return ModelFiles(folder, meta, onnx if onnx.is_file() else None, plan if plan.is_file() else None, requested)


def verify_onnx(files: ModelFiles) -> Path:
    """The ONNX file, checked against the sha256 that cvdvae export recorded (hashed again only
    when the file changed since it was last checked: ``runtime.compiled_cache``)."""
    if files.onnx is None:
        raise CVDVAEError(f"no {ONNX_NAME} in {files.folder}")
    expected = files.meta.get("onnx_sha256")
    if expected and remembered_sha256(files.onnx, cache_folder(files.folder)) != expected:
        raise CVDVAEError(f"{files.onnx} does not match its meta.json (sha256): it was changed after export; "
                          "re-run cvdvae export")
    return files.onnx
