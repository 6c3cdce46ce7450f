"""``python -m export.polygraphy_inputs DIR --out inputs.json``: an export's validation cases as
Polygraphy inputs, so ``polygraphy run --load-inputs`` debugs an engine on the inputs its
check used (real LR pixels, the contract's seeded N(0, 1) noise, temperatures 0 to 1.2)
instead of Polygraphy's uniform [0, 1) defaults. README.md, "Debugging an engine".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from cvdvae.cli import add_common_options, run_command
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
        out.append({"lr": case.lr, "noise": np.ascontiguousarray(np.broadcast_to(noise, (batch, n, dim))),
                    "temperature": np.ascontiguousarray(np.broadcast_to(case.temperature, (batch, n)))})
    return out


def write(args: argparse.Namespace) -> int:
    from polygraphy.json import save_json

    save_json(feeds(args.folder), str(args.out), description="cvdvae reference inputs")
    print(f"wrote {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.polygraphy_inputs", description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, metavar="DIR", help="a cvdvae-export folder")
    p.add_argument("--out", type=Path, required=True, help="the JSON file polygraphy run --load-inputs reads")
    add_common_options(p)
    return run_command(write, p, argv)


if __name__ == "__main__":
    sys.exit(main())
