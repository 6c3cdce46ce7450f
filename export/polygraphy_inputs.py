"""An export's validation cases as Polygraphy inputs (``python -m runtime.cli.polygraphy_inputs DIR
--out inputs.json``), so ``polygraphy run --load-inputs`` debugs an engine on the inputs its
check used (real LR pixels, the contract's seeded N(0, 1) noise, temperatures 0 to 1.2)
instead of Polygraphy's uniform [0, 1) defaults. docs/guides/debugging-engine.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cvdvae.errors import CVDVAEError
from cvdvae.seeding import noise_numpy
from runtime.model_files import META_NAME, read_meta

from .reference import REFERENCE_NAME, load


def feeds(folder: Path) -> list[dict[str, np.ndarray]]:
    """One feed dict per reference case: ``lr``, ``noise``, ``temperature`` as the graph takes them."""
    path = folder / REFERENCE_NAME
    if not path.is_file():
        raise CVDVAEError(f"{path} not found: export with {{validate}} to have reference cases", validate=True)
    dim = int(read_meta(folder / META_NAME)["noise_dim"])
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

