"""``python -m runtime.cli.polygraphy_inputs DIR --out inputs.json``: an export's validation cases as
Polygraphy inputs, so ``polygraphy run --load-inputs`` debugs an engine on the inputs its check used
(``export.polygraphy_inputs``; docs/guides/debugging-engine.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Sequence

import typer

from export.polygraphy_inputs import feeds

from .command import command_app, examples, run_app

app = command_app("An export's validation cases as Polygraphy inputs, for `polygraphy run --load-inputs` "
                  "(docs/guides/debugging-engine.md).")


@app.command("polygraphy-inputs",
             epilog=examples("python -m runtime.cli.polygraphy_inputs engines/x4-fp16 --out inputs.json"))
def write(
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False, metavar="DIR", help="a cvdvae export folder",
                                           show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="the JSON file polygraphy run --load-inputs reads",
                                      show_default=False)],
) -> int:
    from polygraphy.json import save_json

    save_json(feeds(folder), str(out), description="cvdvae reference inputs")
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, prog="python -m runtime.cli.polygraphy_inputs")


if __name__ == "__main__":
    sys.exit(main())
