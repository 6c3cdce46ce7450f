"""``cvdvae export`` (alias ``cvdvae-export``): model -> ``DIR/model.onnx`` + ``DIR/meta.json``
(+ ``DIR/reference.npz``, ``DIR/engine.plan``, and with ``--triton-repo`` a Triton model repository)."""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Optional, Sequence

import typer

from cvdvae.cli import (Checkpoint, ConfigFile, Debug, Overwrite, Quiet, Vdvae, check_choice, check_preset,
                        command_app, examples, run_app)
from cvdvae.errors import CVDVAEError
from cvdvae.fileio import atomic_folder, sha256_file
from runtime.gpu import tensorrt_unavailable_reason as unavailable_reason
from runtime.model_files import META_NAME, ONNX_NAME, PLAN_NAME

from . import cleanup, graph, metadata, profile, reference, triton
from .engine import EngineSettings, add_engine
from .precision import DTYPES, FP32_ISLANDS
from .sources import model_source
from .tensorrt import EngineBuildFailed

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
    debug: Debug = False,
) -> int:
    check_choice(scale, (4, 8, 16), "--scale")
    check_preset(preset)
    if fp16 and bf16:
        raise typer.BadParameter("choose one of --fp16 and --bf16", param_hint="'--bf16'")
    if not triton.NAME.match(triton_name):
        raise typer.BadParameter(f"{triton_name!r}: letters, digits, _ . - only", param_hint="'--triton-name'")
    args = argparse.Namespace(**locals(), precision="fp16" if fp16 else "bf16" if bf16 else "fp32")
    return export(args)


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


def profile_overrides(args: argparse.Namespace) -> dict[str, int]:
    """The profile flags given on the command line (checked together with the recorded profile)."""
    given = {name.replace("-", "_"): getattr(args, name.replace("-", "_")) for name in PROFILE_FLAGS}
    return {k: v for k, v in given.items() if v is not None}


def profile_request(recorded: dict | None, args: argparse.Namespace) -> dict:
    try:
        return profile.requested(recorded, profile_overrides(args))
    except (ValueError, TypeError) as err:
        raise typer.BadParameter(str(err), param_hint="'--min/opt/max-batch', '--min/opt/max-n'") from None


def engine_settings(args: argparse.Namespace) -> EngineSettings:
    return EngineSettings(profile_overrides(args), args.workspace, args.opt_level, args.tf32, args.timing_cache,
                          args.validate, progress=not args.quiet)


class Log:
    def __init__(self, quiet: bool):
        self.quiet, self.start = quiet, time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)


def export(args: argparse.Namespace) -> int:
    """The export folder (or, with --engine-only, its engine), then the Triton repository."""
    repository = args.triton_repo / args.triton_name if args.triton_repo else None
    if repository is not None and repository.exists() and not args.overwrite:
        raise CVDVAEError(f"{repository} exists; pass --overwrite to replace it")  # before any work
    folder = engine_only(args) if args.engine_only else export_folder(args)
    if repository is not None:
        written = triton.write_repository(folder, args.triton_repo, name=args.triton_name, overwrite=args.overwrite)
        print(f"wrote {written}/: {triton.listing(written)}")
    return 0


def export_folder(args: argparse.Namespace) -> Path:
    log = Log(args.quiet)
    requested, shapes = profile_request(None, args), parse_shapes(args.validate_shapes)
    opset = args.opset or graph.default_opset(args.precision)
    if opset < graph.default_opset(args.precision):
        raise typer.BadParameter(f"{opset} is too old for {args.precision}: use {graph.default_opset(args.precision)}+",
                                 param_hint="'--opset'")
    if args.out is not None and args.out.exists() and not args.overwrite:
        raise CVDVAEError(f"{args.out} exists; pass --overwrite to replace it")
    source = model_source(args)
    out = args.out or Path("engines") / f"{source.name}-{args.precision}"
    if out.exists() and not args.overwrite:
        raise CVDVAEError(f"{out} exists; pass --overwrite to replace it")
    reason = None if args.onnx_only else unavailable_reason()
    if reason and args.require_engine:
        raise CVDVAEError(f"no TensorRT engine can be built here: {reason}")
    model = source.model
    exported = model
    if args.precision != "fp32":
        exported = copy.deepcopy(model).cast_weights(DTYPES[args.precision])
    log(f"model: {source.description} ({sum(p.numel() for p in model.parameters()):,} parameters), "
        f"precision {args.precision}")

    with atomic_folder(out, overwrite=args.overwrite) as tmp:
        onnx_path = tmp / ONNX_NAME
        log("tracing to ONNX (torch.export)")
        proto = graph.trace_to_onnx(exported, consistent=args.consistent, opset=opset, verbose=args.debug)
        if graph.random_ops(proto):
            raise RuntimeError(f"the graph contains random operators {graph.random_ops(proto)}")
        log("simplifying (onnxslim), shape inference")
        proto = cleanup.infer_shapes(cleanup.simplify(proto))
        meta = metadata.graph_metadata(exported, args.precision, args.consistent, metadata.graph_sha256(proto))
        metadata.stamp(proto, meta)
        written = cleanup.save(proto, onnx_path)
        del proto
        cleanup.check(onnx_path)
        log(f"wrote {ONNX_NAME} ({sum(f.stat().st_size for f in written) / 2**20:.1f} MiB), onnx.checker passed")
        meta["onnx_sha256"] = sha256_file(onnx_path)
        meta["source"] = source.description
        if args.precision != "fp32":
            meta["fp32_islands"] = FP32_ISLANDS
        meta["profile"] = requested
        if args.validate:
            from .validate import validate

            log("validating the graph against PyTorch")
            report, cases, computed_by = validate(onnx_path, model, args.precision, shapes, exported, args.consistent)
            meta["validation"] = report.to_dict()
            log(report.summary())
            if not report.passed:
                raise RuntimeError(f"{report.summary()}; nothing was written (--no-validate skips the check)")
            reference.save(tmp / reference.REFERENCE_NAME, cases, computed_by)
        metadata.write_json(tmp / META_NAME, meta)
    print(f"wrote {out}/: {', '.join(sorted(p.name for p in out.iterdir()))}")
    if args.onnx_only:
        return out
    if reason:
        print(f"no engine built: {reason}; on a machine with TensorRT and a GPU run: "
              f"cvdvae export --engine-only {shlex.quote(str(out))}", file=sys.stderr)
        return out
    engine_step(args, out, log)
    return out


def engine_step(args: argparse.Namespace, folder: Path, log: Log) -> None:
    """Add the engine to the finished folder. A build TensorRT cannot finish is a warning (exit 1
    with --require-engine); an engine that fails its check is always an error. Either way the
    validated ONNX folder stays."""
    try:
        record = add_engine(folder, engine_settings(args), log, warn)
    except EngineBuildFailed as err:
        if args.require_engine:
            raise
        print(f"no engine built: {err}; the validated ONNX folder {folder} is kept "
              f"(retry: cvdvae export --engine-only {shlex.quote(str(folder))})", file=sys.stderr)
        return
    print(f"wrote {folder / PLAN_NAME} (TensorRT {record['tensorrt_version']}, {record['gpu']})")


def warn(message: str) -> None:
    print(f"cvdvae export: warning: {message}", file=sys.stderr)


def engine_only(args: argparse.Namespace) -> Path:
    """Add engine.plan to a folder exported earlier (e.g. on a machine without a GPU), with the
    profile recorded there unless flags override it. Any failure is an error (exit 1)."""
    folder: Path = args.engine_only
    meta_path, plan = folder / META_NAME, folder / PLAN_NAME
    if not meta_path.is_file() or not (folder / ONNX_NAME).is_file():
        raise CVDVAEError(f"{folder} is not an export folder (needs {ONNX_NAME} and {META_NAME})")
    if plan.exists() and not args.overwrite:
        raise CVDVAEError(f"{plan} exists; pass --overwrite to replace it")
    meta = json.loads(meta_path.read_text())
    if sha256_file(folder / ONNX_NAME) != meta.get("onnx_sha256"):
        raise CVDVAEError(f"{folder / ONNX_NAME} does not match its meta.json (sha256); re-run the export")
    profile_request(meta.get("profile"), args)  # bad flags fail before anything else
    reason = unavailable_reason()
    if reason:
        raise CVDVAEError(f"no TensorRT engine can be built here: {reason}")
    args.require_engine = True
    engine_step(args, folder, Log(args.quiet))
    return folder


if __name__ == "__main__":
    sys.exit(main())
