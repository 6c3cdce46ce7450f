"""``cvdvae-export``: model -> ``DIR/model.onnx`` + ``DIR/meta.json`` (+ ``DIR/engine.plan``)."""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

from cvdvae.cli import add_common_options, run_command
from cvdvae.config import PRESETS
from cvdvae.errors import CVDVAEError
from cvdvae.fileio import atomic_folder, sha256_file
from runtime.gpu import tensorrt_unavailable_reason as unavailable_reason
from runtime.model_files import META_NAME, ONNX_NAME, PLAN_NAME

from . import cleanup, graph, metadata, profile, reference
from .engine import EngineSettings, add_engine
from .precision import DTYPES, FP32_ISLANDS
from .sources import model_source
from .tensorrt import EngineBuildFailed

PROFILE_FLAGS = ("min-batch", "opt-batch", "max-batch", "min-n", "opt-n", "max-n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cvdvae-export", description=(
        "Trace a CVDVAE model into one ONNX graph with explicit noise inputs, validate it against "
        "PyTorch with ONNX Runtime, and build a TensorRT engine where TensorRT and a GPU exist."))
    src = p.add_argument_group("model")
    src.add_argument("--scale", type=int, choices=(4, 8, 16), default=4, help="picks the ffhq256-x{scale} preset")
    src.add_argument("--preset", choices=sorted(PRESETS), help="base config instead of ffhq256-x{scale}")
    src.add_argument("--config", type=Path, help="YAML/JSON of official hyper-parameter names")
    src.add_argument("--checkpoint", type=Path, help=".ckpt, .safetensors or .th weights")
    src.add_argument("--vdvae", type=Path, help="VD-VAE .th with the prior weights the checkpoint lacks")
    src.add_argument("--demo", action="store_true", help="the built-in untrained tiny-x4 demo model")
    g = p.add_argument_group("graph")
    prec = g.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_const", dest="precision", const="fp16", default="fp32")
    prec.add_argument("--bf16", action="store_const", dest="precision", const="bf16")
    g.add_argument("--consistent", action="store_true", help="bake the exact LR-consistency projection in")
    g.add_argument("--opset", type=int, help=f"ONNX opset (default {graph.DEFAULT_OPSET}; "
                                             f"{graph.MIN_OPSET['bf16']} with --bf16)")
    g.add_argument("--no-validate", dest="validate", action="store_false",
                   help="skip the checks (graph against PyTorch, engine against the FP32 reference)")
    g.add_argument("--validate-shapes", default="1x1,2x3", help="BxN list of validation cases (default 1x1,2x3)")
    e = p.add_argument_group("TensorRT engine")
    e.add_argument("--onnx-only", action="store_true", help="do not build an engine")
    e.add_argument("--require-engine", action="store_true",
                   help="fail (exit 1) when no engine is built; the validated ONNX folder is kept")
    e.add_argument("--engine-only", type=Path, metavar="DIR", help="build engine.plan for an existing export folder")
    defaults = profile.Profile()
    for name in PROFILE_FLAGS:
        default = getattr(defaults, name.replace("-", "_"))
        e.add_argument(f"--{name}", type=int, metavar="K", help=f"optimization profile (default {default}: at most "
                       "16 samples per call, fewer where the GPU's free memory is short; --engine-only keeps "
                       "the folder's recorded profile)")
    e.add_argument("--workspace", type=float, default=8.0, help="builder workspace limit in GiB")
    e.add_argument("--opt-level", type=int, default=3, choices=range(6), help="builder optimization level")
    e.add_argument("--tf32", action="store_true",
                   help="let an fp32 engine compute in TF32 (faster, ~3 fewer digits; recorded in meta.json)")
    e.add_argument("--timing-cache", type=Path, help="load/save a timing cache (development builds)")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, help="output folder (default engines/{x4|demo-x4}-{precision})")
    o.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    o.add_argument("--quiet", action="store_true")
    add_common_options(p)
    return p


def parse_shapes(text: str) -> list[tuple[int, int]]:
    try:
        shapes = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise CVDVAEError(f"--validate-shapes {text!r}: expected a list like 1x1,2x3 (images x samples)")
    return shapes  # type: ignore[return-value]


def profile_overrides(args: argparse.Namespace) -> dict[str, int]:
    """The profile flags given on the command line (checked together with the recorded profile)."""
    given = {name.replace("-", "_"): getattr(args, name.replace("-", "_")) for name in PROFILE_FLAGS}
    return {k: v for k, v in given.items() if v is not None}


def profile_request(recorded: dict | None, args: argparse.Namespace) -> dict:
    try:
        return profile.requested(recorded, profile_overrides(args))
    except (ValueError, TypeError) as err:
        raise CVDVAEError(str(err)) from None


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
    if args.engine_only:
        return engine_only(args)
    log = Log(args.quiet)
    requested, shapes = profile_request(None, args), parse_shapes(args.validate_shapes)
    opset = args.opset or graph.default_opset(args.precision)
    if opset < graph.default_opset(args.precision):
        raise CVDVAEError(f"--opset {opset} is too old for {args.precision}: use {graph.default_opset(args.precision)}+")
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
        return 0
    if reason:
        print(f"no engine built: {reason}; on a machine with TensorRT and a GPU run: "
              f"cvdvae-export --engine-only {shlex.quote(str(out))}", file=sys.stderr)
        return 0
    return engine_step(args, out, log)


def engine_step(args: argparse.Namespace, folder: Path, log: Log) -> int:
    """Add the engine to the finished folder. A build TensorRT cannot finish is a warning (exit 1
    with --require-engine); an engine that fails its check is always an error. Either way the
    validated ONNX folder stays."""
    try:
        record = add_engine(folder, engine_settings(args), log, warn)
    except EngineBuildFailed as err:
        if args.require_engine:
            raise
        print(f"no engine built: {err}; the validated ONNX folder {folder} is kept "
              f"(retry: cvdvae-export --engine-only {shlex.quote(str(folder))})", file=sys.stderr)
        return 0
    print(f"wrote {folder / PLAN_NAME} (TensorRT {record['tensorrt_version']}, {record['gpu']})")
    return 0


def warn(message: str) -> None:
    print(f"cvdvae-export: warning: {message}", file=sys.stderr)


def engine_only(args: argparse.Namespace) -> int:
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
    return engine_step(args, folder, Log(args.quiet))


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(export, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
