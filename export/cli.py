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

from . import cleanup, graph, metadata
from .precision import DTYPES, FP32_ISLANDS
from .sources import model_source
from .tensorrt import Profile, build_engine

ONNX_NAME, META_NAME, PLAN_NAME = "model.onnx", "meta.json", "engine.plan"


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
    g.add_argument("--no-validate", dest="validate", action="store_false", help="skip the ONNX Runtime check")
    g.add_argument("--validate-shapes", default="1x1,2x3", help="BxN list for the FP32 check (default 1x1,2x3)")
    e = p.add_argument_group("TensorRT engine")
    e.add_argument("--onnx-only", action="store_true", help="do not build an engine")
    e.add_argument("--require-engine", action="store_true", help="fail when no engine can be built here")
    e.add_argument("--engine-only", type=Path, metavar="DIR", help="build engine.plan for an existing export folder")
    for name, default in (("min-batch", 1), ("opt-batch", 1), ("max-batch", 4), ("min-n", 1), ("opt-n", 8), ("max-n", 16)):
        e.add_argument(f"--{name}", type=int, default=default, help=f"optimization profile (default {default})")
    e.add_argument("--workspace", type=float, default=8.0, help="builder workspace limit in GiB")
    e.add_argument("--opt-level", type=int, default=3, choices=range(6), help="builder optimization level")
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


def profile_from(args: argparse.Namespace) -> Profile:
    try:
        return Profile(args.min_batch, args.opt_batch, args.max_batch, args.min_n, args.opt_n, args.max_n)
    except ValueError as err:
        raise CVDVAEError(str(err)) from None


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
    profile, shapes = profile_from(args), parse_shapes(args.validate_shapes)
    opset = args.opset or graph.default_opset(args.precision)
    if opset < graph.default_opset(args.precision):
        raise CVDVAEError(f"--opset {opset} is too old for {args.precision}: use {graph.default_opset(args.precision)}+")
    if args.out is not None and args.out.exists() and not args.overwrite:
        raise CVDVAEError(f"{args.out} exists; pass --overwrite to replace it")
    source = model_source(args)
    out = args.out or Path("engines") / f"{source.name}-{args.precision}"
    if out.exists() and not args.overwrite:
        raise CVDVAEError(f"{out} exists; pass --overwrite to replace it")
    reference = source.model
    exported = reference
    if args.precision != "fp32":
        exported = copy.deepcopy(reference).cast_weights(DTYPES[args.precision])
    log(f"model: {source.description} ({sum(p.numel() for p in reference.parameters()):,} parameters), "
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
        if args.validate:
            from .validate import validate

            log("validating with ONNX Runtime against PyTorch")
            report = validate(onnx_path, reference, args.precision, shapes, exported, args.consistent)
            meta["validation"] = report.to_dict()
            log(report.summary())
            if not report.passed:
                raise RuntimeError(f"{report.summary()}; nothing was written (--no-validate skips the check)")
        meta["engine"] = engine_step(args, tmp, meta, profile, log)
        metadata.write_json(tmp / META_NAME, meta)
    print(f"wrote {out}/: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


def engine_step(args: argparse.Namespace, folder: Path, meta: dict, profile: Profile, log: Log) -> dict | None:
    if args.onnx_only:
        return None
    reason = unavailable_reason()
    if reason:
        if args.require_engine:
            raise CVDVAEError(f"no TensorRT engine can be built here: {reason}")
        target = args.out or "DIR"
        print(f"no engine built: {reason}; on a machine with TensorRT and a GPU run: "
              f"cvdvae-export --engine-only {shlex.quote(str(target))}", file=sys.stderr)
        return None
    log("building the TensorRT engine")
    info = build_engine(folder / ONNX_NAME, folder / PLAN_NAME, lr_size=meta["lr_size"],
                        noise_dim=meta["noise_dim"], profile=profile, workspace_gib=args.workspace,
                        optimization_level=args.opt_level, timing_cache=args.timing_cache,
                        progress=not args.quiet)
    log(f"wrote {PLAN_NAME} (TensorRT {info['tensorrt_version']}, {info['gpu']})")
    return info


def engine_only(args: argparse.Namespace) -> int:
    """Add engine.plan to a folder exported earlier (e.g. on a machine without a GPU)."""
    folder: Path = args.engine_only
    meta_path, plan = folder / META_NAME, folder / PLAN_NAME
    if not meta_path.is_file() or not (folder / ONNX_NAME).is_file():
        raise CVDVAEError(f"{folder} is not an export folder (needs {ONNX_NAME} and {META_NAME})")
    if plan.exists() and not args.overwrite:
        raise CVDVAEError(f"{plan} exists; pass --overwrite to replace it")
    reason = unavailable_reason()
    if reason:
        raise CVDVAEError(f"no TensorRT engine can be built here: {reason}")
    meta = json.loads(meta_path.read_text())
    if sha256_file(folder / ONNX_NAME) != meta.get("onnx_sha256"):
        raise CVDVAEError(f"{folder / ONNX_NAME} does not match its meta.json (sha256); re-run the export")
    meta["engine"] = engine_step(args, folder, meta, profile_from(args), Log(args.quiet))
    metadata.write_json(meta_path, meta)
    print(f"wrote {plan}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(export, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
