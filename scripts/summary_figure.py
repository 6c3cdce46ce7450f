"""The docs' mean-and-spread figure: the demo model's 64 samples of the demo face, summarised.

    python scripts/summary_figure.py docs/assets/demo-summary.png

Tiles, each enlarged 4x (nearest): the LR input, the HR face, four of the samples, the mean of
all 64 and their per-pixel standard deviation map with its scale bar (drawn at the enlarged
size so its labels read). The demo model's weights are random: its samples are textures.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from runtime.cli.demo import demo_engine, write_face
from runtime.images.colormap import map_with_scale
from runtime.images.outputs import grid, nearest_upscale, write_png
from runtime.pipeline import Pipeline

ENLARGE, N, SHOWN = 4, 64, 4


def enlarged(hwc: np.ndarray) -> np.ndarray:
    return hwc.repeat(ENLARGE, axis=0).repeat(ENLARGE, axis=1)


def main(out: Path) -> None:
    pipe = Pipeline.from_pretrained(demo_engine(Path("outputs/demo/engine")))
    with tempfile.TemporaryDirectory() as tmp:
        face = Path(tmp) / "face.png"
        write_face(face)
        output = pipe(face, n=N, seed=0, from_hr=True)
    item, summary = output.inputs[0], output.summary(0)
    tiles = [nearest_upscale(np.round(item.lr).astype(np.uint8), pipe.shape.scale * ENLARGE), enlarged(item.hr),
             *[enlarged(sample) for sample in output.samples[0][:SHOWN]], enlarged(summary.mean_pixels()),
             map_with_scale(enlarged(summary.std), summary.top)]
    write_png(out, grid(tiles))
    print(f"{out}: LR, HR, {SHOWN} of {N} samples, their mean and standard deviation map "
          f"(0 to {summary.top:.1f} levels)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/assets/demo-summary.png"))
