"""``cvdvae demo``: the whole pipeline on the built-in untrained ``tiny-x4`` model (8 -> 32).

1. ``cvdvae export --demo`` traces the model into ``outputs/demo/engine/`` (once);
2. a synthetic 32x32 face is written as the HR input;
3. ``cvdvae run --from-hr`` degrades it with the MATLAB bicubic kernel and draws 8 seeded
   samples with ONNX Runtime (TensorRT where an engine was built).

The weights are random, so the samples are textures, not faces; with real weights the
same two commands give faces (README.md). Re-running regenerates ``outputs/demo/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Annotated, Sequence

import numpy as np
import torch
import typer

from cvdvae.cli import EXIT_OK, Debug, Seed, Temperatures, command_app, examples, run_app
from cvdvae.fileio import atomic_path


def synthetic_face(size: int) -> torch.Tensor:
    """A smooth face-like drawing ``[3, size, size]`` in 0..255 (no image files needed)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    face = ((xx / 0.7) ** 2 + (yy / 0.9) ** 2 < 1).float()
    eyes = (((xx.abs() - 0.3) / 0.12) ** 2 + ((yy + 0.2) / 0.1) ** 2 < 1).float()
    mouth = (((xx / 0.35) ** 2 + ((yy - 0.45) / 0.08) ** 2) < 1).float()
    skin, background = torch.tensor([224.0, 172.0, 140.0]), torch.tensor([60.0, 90.0, 140.0])
    img = background[:, None, None] * (1 - face) + skin[:, None, None] * face
    img = img * (1 - 0.7 * eyes) * (1 - 0.5 * mouth)
    return img.clamp(0, 255).round()


def write_face(path: Path, size: int) -> None:
    from PIL import Image

    pixels = synthetic_face(size).permute(1, 2, 0).numpy().astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def run_demo(args: argparse.Namespace) -> int:
    from export.cli import main as export_main
    from runtime.cli import main as run_main

    out: Path = args.out
    engine = out / "engine"
    if not (engine / "meta.json").is_file():
        code = export_main(["--demo", "--out", str(engine), "--overwrite", "--quiet"])
        if code != EXIT_OK:
            return code
    face = out / "face.png"
    write_face(face, 32)
    temperatures = [f"--temperature={t}" for t in args.temperature or ()]
    return run_main([str(engine), "--input", str(face), "--from-hr", "--n", str(args.n), "--seed", str(args.seed),
                     *temperatures, "--out", str(out), "--overwrite"])


app = command_app("The whole pipeline on the built-in untrained tiny model: export, then seeded samples of one "
                  "synthetic face (textures, not faces: the weights are random).")


@app.command("demo", epilog=examples("cvdvae demo", "cvdvae demo --n 4 --seed 3 --out /tmp/demo"))
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="demo folder")] = Path("outputs/demo"),
    n: Annotated[int, typer.Option("--n", min=1, help="samples")] = 8,
    seed: Seed = 0,
    temperature: Temperatures = None,
    debug: Debug = False,
) -> int:
    return run_demo(argparse.Namespace(**locals()))


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, prog="cvdvae-demo")


if __name__ == "__main__":
    sys.exit(main())
