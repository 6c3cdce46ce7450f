"""``cvdvae demo``: the whole pipeline on the built-in untrained ``tiny-x4`` model (8 -> 32).

1. the model is exported into ``outputs/demo/engine/`` (once; ``export.exporter``);
2. a synthetic 32x32 face is written as the HR input;
3. ``cvdvae.Pipeline`` degrades it with the MATLAB bicubic kernel (``from_hr``) and draws 8
   seeded samples; they, their mean and standard deviation map, and their grid are written by
   the flow ``cvdvae run --from-hr --summary`` writes with (``runtime.run_files``), into the
   same kind of run record.

The weights are random, so the samples are textures, not faces; with real weights the
same steps give faces (docs/getting-started/first-model.md). Re-running regenerates ``outputs/demo/``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Sequence

import numpy as np
import typer

from cvdvae.fileio import atomic_path

from .command import command_app, examples, flag_for, run_app
from .common import Samples, Seed, Temperatures, parse_temperatures

FACE_SIZE = 32


def synthetic_face(size: int) -> np.ndarray:
    """A smooth face-like drawing, HWC uint8 (no image files needed)."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    face = ((xx / 0.7) ** 2 + (yy / 0.9) ** 2 < 1).astype(np.float64)[..., None]
    eyes = (((np.abs(xx) - 0.3) / 0.12) ** 2 + ((yy + 0.2) / 0.1) ** 2 < 1).astype(np.float64)[..., None]
    mouth = ((xx / 0.35) ** 2 + ((yy - 0.45) / 0.08) ** 2 < 1).astype(np.float64)[..., None]
    skin, background = np.array([224.0, 172.0, 140.0]), np.array([60.0, 90.0, 140.0])
    image = (background * (1 - face) + skin * face) * (1 - 0.7 * eyes) * (1 - 0.5 * mouth)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def write_face(path: Path, size: int = FACE_SIZE) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(synthetic_face(size)).save(tmp, format="PNG")


def demo_engine(folder: Path) -> Path:
    """The demo model's export folder, made once."""
    from export.exporter import ExportSpec, export_folder
    from export.model_source import ModelChoice

    from ..model_files import META_NAME

    if not (folder / META_NAME).is_file():
        export_folder(ExportSpec(ModelChoice(demo=True), out=folder, overwrite=True, engine=False),
                      log=lambda message: None, warn=lambda message: print(f"warning: {message}", file=sys.stderr))
    return folder


app = command_app("The whole pipeline on the built-in untrained tiny model: export, then seeded samples of one "
                  "synthetic face (textures, not faces: the weights are random).")


@app.command("demo", epilog=examples("cvdvae demo", "cvdvae demo --n 4 --seed 3 --out /tmp/demo"))
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="demo folder")] = Path("outputs/demo"),
    n: Samples = None,
    seed: Seed = 0,
    temperature: Temperatures = None,
) -> int:
    from ..pipeline import Pipeline
    from ..run_files import RunRecord, RunSettings, engine_record, write_lr_inputs

    temperatures = np.asarray(parse_temperatures(temperature, n), np.float32)
    pipe = Pipeline.from_pretrained(demo_engine(out / "engine"))
    face = out / "face.png"
    write_face(face)
    settings = RunSettings(out, seed, temperatures, grid=True, overwrite=True, summary=True, from_hr=True)
    record = RunRecord(inputs=1, say=lambda line: print(f"cvdvae demo: error: {line}", file=sys.stderr))
    write_lr_inputs(pipe, [face], settings, record, flag_for)
    record.engine = engine_record(pipe.backend)
    record.finish(settings)
    if record.done:
        print(f"wrote {settings.n} samples of {face}, their mean and standard deviation map "
              f"({face.stem}_s{seed}_mean.png, _std.png) and {face.stem}_s{seed}_grid.png to {out}/ "
              f"({pipe.backend.name}, the built-in untrained model: textures, not faces)")
    return record.exit_status


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, prog="cvdvae-demo")


if __name__ == "__main__":
    sys.exit(main())
