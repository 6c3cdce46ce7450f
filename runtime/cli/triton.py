"""``python -m runtime.cli.triton EXPORT_DIR --out REPO``: a Triton Inference Server model repository
for a folder ``cvdvae export`` wrote (``export.triton``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional, Sequence

import typer

from export.triton import DEFAULT_NAME, NAME, PLATFORMS, listing, write_repository

from .command import command_app, examples, run_app
from .common import Overwrite, Quiet, check_choice

app = command_app("Write a Triton Inference Server model repository (REPO/NAME/config.pbtxt and REPO/NAME/1/"
                  "model.plan or model.onnx) for a folder cvdvae export wrote.")


@app.command("triton", epilog=examples(
    "python -m runtime.cli.triton engines/x4-fp16 --out triton-models              # the engine where there is one",
    "python -m runtime.cli.triton engines/demo-x4-fp32 --out triton-models --name demo --prefer onnx"))
def triton_command(
    export_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False, metavar="EXPORT_DIR",
                                               help="a folder cvdvae export wrote")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="REPO", file_okay=False,
                                      help="the model repository (tritonserver --model-repository)")],
    name: Annotated[str, typer.Option(help="the model's name: its folder in REPO")] = DEFAULT_NAME,
    prefer: Annotated[str, typer.Option(help="plan: engine.plan where the folder has one (TensorRT backend); "
                                             "onnx: model.onnx (ONNX Runtime backend)")] = "plan",
    max_batch: Annotated[Optional[int], typer.Option(min=1, help=(
        "max_batch_size, images per call (default: the engine's profile; for ONNX the export's --max-batch, "
        "else 2)"))] = None,
    max_queue_delay_us: Annotated[int, typer.Option(min=0, help="how long the dynamic batcher waits to fill a "
                                                                "batch, microseconds")] = 2000,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> int:
    check_choice(prefer, tuple(PLATFORMS), "--prefer")
    if not NAME.match(name):
        raise typer.BadParameter(f"{name!r}: letters, digits, _ . - only", param_hint="'--name'")
    target = write_repository(export_dir, out, name=name, max_batch=max_batch, max_queue_delay_us=max_queue_delay_us,
                              overwrite=overwrite, prefer=prefer)
    if not quiet:
        print(f"wrote {target}/: {listing(target)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, prog="python -m runtime.cli.triton")


if __name__ == "__main__":
    sys.exit(main())
