"""``cvdvae export`` (alias ``cvdvae-export``): model -> ``DIR/model.onnx`` + ``DIR/meta.json``
(+ ``DIR/reference.npz``, ``DIR/engine.plan``, and with ``--triton-repo`` a Triton model repository).
The work is ``export.exporter``'s; this module reads flags and reports."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Optional, Sequence

import typer

from cvdvae.errors import CVDVAEError
from export import graph, profile, triton
from export.engine import EngineSettings
from export.tensorrt import BuilderSettings
from export.exporter import ExportSpec, add_engine_to_folder, export_folder
from export.model_source import ModelChoice

from ..model_files import META_NAME, PLAN_NAME, read_meta
from .command import DEBUG, command_app, examples, run_app
from .common import Checkpoint, ConfigFile, Overwrite, Quiet, Vdvae, check_choice, check_preset

PROFILE_FLAGS = ("min-batch", "opt-batch", "max-batch", "min-n", "opt-n", "max-n")


app = command_app("Trace a CVDVAE model (or, with --prior, the unconditional VD-VAE prior) into one ONNX graph "
                  "with explicit noise inputs, validate it against PyTorch, and build a checked TensorRT engine "
                  "where TensorRT and a GPU exist.")
Profile = Annotated[Optional[int], typer.Option(min=1, rich_help_panel="TensorRT engine", help=(
    "optimization profile (default B 1..2 opt 1, n 1..8 opt 8: at most 16 samples per call, fewer where the GPU's "
    "free memory is short; --engine-only keeps the folder's recorded profile)"))]


@app.command("export", epilog=examples(
    "cvdvae export --demo --out engines/demo                       # built-in tiny model, any machine",
    "cvdvae export --prior --fp16                                  # the fetched VD-VAE prior: faces from noise",
    "cvdvae export --scale 4 --fp16 --checkpoint x4.safetensors    # then, on the GPU: --engine-only engines/x4-fp16"))
def export_command(
    scale: Annotated[int, typer.Option(help="picks the ffhq256-x{scale} preset: 4, 8 or 16",
                                       rich_help_panel="Model")] = 4,
    preset: Annotated[Optional[str], typer.Option(help="base config instead of ffhq256-x{scale}",
                                                  rich_help_panel="Model")] = None,
    config: ConfigFile = None,
    checkpoint: Checkpoint = None,
    vdvae: Vdvae = None,
    prior: Annotated[bool, typer.Option("--prior", rich_help_panel="Model", help=(
        "export the unconditional VD-VAE prior (no LR input): --vdvae/--checkpoint, else the one "
        "cvdvae fetch vdvae-ffhq256 put in $CVDVAE_HOME"))] = False,
    demo: Annotated[bool, typer.Option("--demo", help="the built-in untrained tiny-x4 demo model",
                                       rich_help_panel="Model")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="float16 graph with float32 islands",
                                       rich_help_panel="Graph")] = False,
    bf16: Annotated[bool, typer.Option("--bf16", help="bfloat16 graph with float32 islands",
                                       rich_help_panel="Graph")] = False,
    consistent: Annotated[bool, typer.Option("--consistent", help="bake the exact LR-consistency projection in",
                                             rich_help_panel="Graph")] = False,
    opset: Annotated[Optional[int], typer.Option(min=1, rich_help_panel="Graph", help=(
        f"ONNX opset (default {graph.DEFAULT_OPSET}; {graph.MIN_OPSET['bf16']} with --bf16)"))] = None,
    validate: Annotated[bool, typer.Option("--validate/--no-validate", rich_help_panel="Graph", help=(
        "the checks: graph against PyTorch, engine against the FP32 reference"))] = True,
    validate_shapes: Annotated[str, typer.Option(help="BxN list of validation cases",
                                                 rich_help_panel="Graph")] = "1x1,2x3",
    onnx_only: Annotated[bool, typer.Option("--onnx-only", help="do not build an engine",
                                            rich_help_panel="TensorRT engine")] = False,
    require_engine: Annotated[bool, typer.Option("--require-engine", rich_help_panel="TensorRT engine", help=(
        "fail (exit 1) when no engine is built; the validated ONNX folder is kept"))] = False,
    engine_only: Annotated[Optional[Path], typer.Option(
        "--engine-only", exists=True, file_okay=False, metavar="DIR", rich_help_panel="TensorRT engine",
        help="build engine.plan for an existing export folder")] = None,
    min_batch: Profile = None, opt_batch: Profile = None, max_batch: Profile = None,
    min_n: Profile = None, opt_n: Profile = None, max_n: Profile = None,
    workspace: Annotated[float, typer.Option(min=0.0625, help="builder workspace limit in GiB",
                                             rich_help_panel="TensorRT engine")] = 8.0,
    opt_level: Annotated[int, typer.Option(min=0, max=5, help="builder optimization level",
                                           rich_help_panel="TensorRT engine")] = 3,
    tf32: Annotated[bool, typer.Option("--tf32", rich_help_panel="TensorRT engine", help=(
        "let an fp32 engine compute in TF32 (faster, ~3 fewer digits; recorded in meta.json)"))] = False,
    timing_cache: Annotated[Optional[Path], typer.Option(help="load/save a timing cache (development builds)",
                                                         dir_okay=False, rich_help_panel="TensorRT engine")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help=(
        "output folder (default engines/{x4|demo-x4|vdvae-ffhq256}-{precision})"))] = None,
    triton_repo: Annotated[Optional[Path], typer.Option(
        "--triton-repo", metavar="DIR", file_okay=False, rich_help_panel="Triton Inference Server", help=(
            "then write a model repository for the folder: DIR/NAME/config.pbtxt and DIR/NAME/1/model.plan "
            "where an engine was built, else model.onnx"))] = None,
    triton_name: Annotated[str, typer.Option(metavar="NAME", rich_help_panel="Triton Inference Server",
                                             help="the model's name in --triton-repo")] = triton.DEFAULT_NAME,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> int:
    check_choice(scale, (4, 8, 16), "--scale")
    check_preset(preset)
    if fp16 and bf16:
        raise typer.BadParameter("choose one of --fp16 and --bf16", param_hint="'--bf16'")
    if not triton.NAME.match(triton_name):
        raise typer.BadParameter(f"{triton_name!r}: letters, digits, _ . - only", param_hint="'--triton-name'")
    precision = "fp16" if fp16 else "bf16" if bf16 else "fp32"
    if opset is not None and opset < graph.default_opset(precision):
        raise typer.BadParameter(f"{opset} is too old for {precision}: use {graph.default_opset(precision)}+",
                                 param_hint="'--opset'")
    given = dict(zip((f.replace("-", "_") for f in PROFILE_FLAGS), (min_batch, opt_batch, max_batch, min_n, opt_n,
                                                                     max_n)))
    overrides = {k: v for k, v in given.items() if v is not None}
    has_meta = engine_only is not None and (engine_only / META_NAME).is_file()
    recorded = read_meta(engine_only / META_NAME).get("profile") if has_meta else None
    try:
        profile.requested(recorded, overrides)
    except (ValueError, TypeError) as err:
        raise typer.BadParameter(str(err), param_hint="'--min/opt/max-batch', '--min/opt/max-n'") from None
    repository = triton_repo / triton_name if triton_repo else None
    if repository is not None and repository.exists() and not overwrite:
        raise CVDVAEError(f"{repository} exists; pass --overwrite to replace it")  # before any work
    settings = EngineSettings(BuilderSettings(workspace, opt_level, tf32, timing_cache, progress=not quiet), overrides,
                              validate)
    log = Log(quiet)
    if engine_only is not None:
        exported = add_engine_to_folder(engine_only, settings, overwrite, log, warn)
    else:
        choice = ModelChoice(demo, prior, checkpoint, vdvae, config, preset, scale, consistent)
        spec = ExportSpec(choice, precision, opset, validate, tuple(parse_shapes(validate_shapes)), out, overwrite,
                          not onnx_only, require_engine, settings, verbose=DEBUG.get())
        exported = export_folder(spec, log, warn)
        for note in exported.notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"wrote {exported.folder}/: {', '.join(sorted(p.name for p in exported.folder.iterdir()))}")
    folder = exported.folder
    if exported.engine is not None:
        print(f"wrote {folder / PLAN_NAME} (TensorRT {exported.engine['tensorrt_version']}, {exported.engine['gpu']})")
    elif exported.no_engine is not None:
        print(f"no engine built: {exported.no_engine}; the validated ONNX folder {folder} is kept (on a machine with "
              f"TensorRT and a GPU: cvdvae export --engine-only {shlex.quote(str(folder))})", file=sys.stderr)
    if repository is not None:
        written = triton.write_repository(folder, triton_repo, name=triton_name, overwrite=overwrite)
        print(f"wrote {written}/: {triton.listing(written)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, prog="cvdvae-export")


def parse_shapes(text: str) -> list[tuple[int, int]]:
    try:
        shapes = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise typer.BadParameter(f"{text!r}: expected a list like 1x1,2x3 (images x samples)",
                                 param_hint="'--validate-shapes'")
    return shapes  # type: ignore[return-value]


class Log:
    def __init__(self, quiet: bool):
        self.quiet, self.start = quiet, time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"cvdvae export: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
