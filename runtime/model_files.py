"""What ``MODEL`` names: an ``engine.plan``, a ``model.onnx`` or an export folder, and its meta.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvdvae.errors import CVDVAEError
from cvdvae.fileio import sha256_file

ONNX_NAME, META_NAME, PLAN_NAME = "model.onnx", "meta.json", "engine.plan"


@dataclass(frozen=True)
class ModelFiles:
    folder: Path
    meta: dict[str, Any]
    onnx: Path | None
    plan: Path | None
    requested: str  # "plan", "onnx" or "folder": what the user pointed at

    @property
    def conditional(self) -> bool:
        """Whether the graph takes LR images (False: a prior-only VD-VAE, contracts.md 3.1)."""
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

    def activation_bytes_per_sample(self, bytes_per_value: int = 4) -> int:
        """A sample keeps about eight width x H x W tensors alive at its largest resolution
        (FFHQ-256 in float32: 1.1 GB, as measured)."""
        width = int(self.meta.get("config", {}).get("width", 512))
        return 8 * bytes_per_value * width * self.hr_size**2


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
    meta_path = folder / META_NAME
    if not meta_path.is_file():
        raise CVDVAEError(f"{meta_path} not found: MODEL must come from cvdvae export (re-run it)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CVDVAEError(f"{meta_path} is not readable JSON ({err}); re-run cvdvae export") from None
    missing = [k for k in ("lr_size", "hr_size", "scale", "noise_dim", "precision") if k not in meta]
    if missing:
        raise CVDVAEError(f"{meta_path} lacks {', '.join(missing)}; re-run cvdvae export")
    onnx = path if requested == "onnx" else folder / ONNX_NAME
    plan = path if requested == "plan" else folder / PLAN_NAME
    return ModelFiles(folder, meta, onnx if onnx.is_file() else None, plan if plan.is_file() else None, requested)


def verify_onnx(files: ModelFiles) -> Path:
    """The ONNX file, checked against the sha256 that cvdvae export recorded."""
    if files.onnx is None:
        raise CVDVAEError(f"no {ONNX_NAME} in {files.folder}")
    expected = files.meta.get("onnx_sha256")
    if expected and sha256_file(files.onnx) != expected:
        raise CVDVAEError(f"{files.onnx} does not match its meta.json (sha256): it was changed after export; "
                          "re-run cvdvae export")
    return files.onnx
