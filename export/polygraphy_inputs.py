"""``python -m export.polygraphy_inputs DIR --out inputs.json``: an export's validation cases as
Polygraphy inputs, so ``polygraphy run --load-inputs`` debugs an engine on the inputs its
check used (real LR pixels, the contract's seeded N(0, 1) noise, temperatures 0 to 1.2)
instead of Polygraphy's uniform [0, 1) defaults. README.md, "Debugging an engine".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Sequence

import numpy as np
import typer

from cvdvae.cli import Debug, command_app, examples, run_app
from cvdvae.errors import CVDVAEError
from cvdvae.seeding import noise_numpy
from runtime.model_files import META_NAME

from .reference import REFERENCE_NAME, load


def feeds(folder: Path) -> list[dict[str, np.ndarray]]:
    """One feed dict per reference case: ``lr``, ``noise``, ``temperature`` as the graph takes them."""
    path = folder / REFERENCE_NAME
    if not path.is_file():
        raise CVDVAEError(f"{path} not found: export without --no-validate to have reference cases")
    dim = int(json.loads((folder / META_NAME).read_text())["noise_dim"])
    out = []
    for case in load(path)[0]:
        batch, n = case.shape
        noise = noise_numpy(case.seed, n, dim)
        feed = {"noise": np.ascontiguousarray(np.broadcast_to(noise, (batch, n, dim))),
                "temperature": np.ascontiguousarray(np.broadcast_to(case.temperature, (batch, n)))}
        if case.lr is not None:
            feed["lr"] = case.lr
        out.append(feed)
    return out


app = command_app("An export's validation cases as Polygraphy inputs, for `polygraphy run --load-inputs` "
                  "(README.md, 'Debugging an engine').")


@app.command("polygraphy-inputs",
             epilog=examples("python -m export.polygraphy_inputs engines/x4-fp16 --out inputs.json"))
def write(
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False, metavar="DIR", help="a cvdvae export folder",
                                           show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="the JSON file polygraphy run --load-inputs reads",
                                      show_default=False)],
    debug: Debug = False,
) -> int:
    from polygraphy.json import save_json

    save_json(feeds(folder), str(out), description="cvdvae reference inputs")
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, prog="python -m export.polygraphy_inputs")


if __name__ == "__main__":
    sys.exit(main())
