"""``cvdvae fetch`` (alias ``cvdvae-fetch``): the public weights a user needs, into ``$CVDVAE_HOME``
(``cvdvae.hub``)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional, Sequence

import typer

from cvdvae.hub.assets import ASSETS, Request, fetch, listing
from cvdvae.hub.home import cvdvae_home

from .command import command_app, examples, run_app
from .common import Json, Overwrite, Quiet, check_choice

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
) -> int:
    home, names = cvdvae_home(), names or []
    for name in names:
        check_choice(name, list(ASSETS), "NAME")
    if list_ or not names:
        rows = listing(home)
        if json_:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                print(f"{row['name']:<18} {'present' if row['present'] else 'missing':<8} {row['description']}")
        return 0
    if url and len(names) != 1:
        raise typer.BadParameter("give exactly one NAME with --url", param_hint="'--url'")
    request = Request(home, url, overwrite, progress=not (quiet or json_), retries=retries)
    records = {}
    for name in names:
        records[name] = fetch(ASSETS[name], request)
        if not (quiet or json_):
            if records[name].get("kept"):
                print(f"{name}: present, verified", file=sys.stderr)
            files = ASSETS[name].files
            print(f"{name}: {home / files[0]}" + (f" and {len(files) - 1} more" if len(files) > 1 else ""))
    if json_:
        print(json.dumps(records, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, prog="cvdvae-fetch")


if __name__ == "__main__":
    sys.exit(main())
