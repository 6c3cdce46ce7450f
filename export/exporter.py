"""``cvdvae export`` as a library: a model -> a finished export folder, then its engine.

``export_folder`` traces the model (``export.graph``), cleans the graph (``export.onnx_passes``),
stamps its metadata (``export.metadata``), checks it against PyTorch (``export.validate``) and
writes the folder atomically: ``model.onnx``, ``meta.json``, ``reference.npz``. Where TensorRT
and a GPU exist it then adds a checked ``engine.plan`` (``export.engine``); ``add_engine``
does that for a folder exported earlier, e.g. on a machine without a GPU.

Progress goes to ``log``; what the caller should know goes into the returned ``Exported``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cvdvae.errors import CVDVAEError
from cvdvae.fileio import atomic_folder, sha256_file
from runtime.backends.gpu import tensorrt_unavailable_reason
from runtime.model_files import META_NAME, ONNX_NAME, PLAN_NAME, read_meta, write_meta

from . import graph, metadata, onnx_passes, profile, reference
from .engine import EngineSettings, build_engine
from .model_source import ModelChoice, model_source
from .precision import DTYPES, FP32_ISLANDS
from .tensorrt import EngineBuildFailed

Log = Callable[[str], None]
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class ExportSpec:
    model: ModelChoice = field(default_factory=ModelChoice)
    precision: str = "fp32"
    opset: int | None = None             # default: graph.default_opset(precision)
    validate: bool = True                # the graph against PyTorch, the engine against the reference
    validate_shapes: tuple[tuple[int, int], ...] = ((1, 1), (2, 3))  # (B, n) of the validation cases
    out: Path | None = None              # default: engines/{name}-{precision}
    overwrite: bool = False
    engine: bool = True                  # build an engine where TensorRT and a GPU exist
    require_engine: bool = False         # no engine built is a failure (the validated folder is kept)
    engine_settings: EngineSettings = field(default_factory=EngineSettings)
    verbose: bool = False                # the tracer's own logging


@dataclass
class Exported:
    folder: Path
    engine: dict[str, Any] | None = None  # meta.json's engine record, when one was built
    no_engine: str | None = None          # why none was built, when one was wanted
    notes: list[str] = field(default_factory=list)


def export_folder(spec: ExportSpec, log: Log, warn: Log) -> Exported:
    """The export folder for ``spec``, then its engine where one can be built."""
    if spec.precision not in PRECISIONS:
        raise CVDVAEError(f"precision must be one of {', '.join(PRECISIONS)}, not {spec.precision!r}")
    requested = profile.requested(None, spec.engine_settings.profile_overrides)
    opset = spec.opset or graph.default_opset(spec.precision)
    if opset < graph.default_opset(spec.precision):
        raise CVDVAEError(f"opset {opset} is too old for {spec.precision}: use {graph.default_opset(spec.precision)}+")
    if spec.out is not None and spec.out.exists() and not spec.overwrite:
        raise CVDVAEError(f"{spec.out} exists; pass {{overwrite}} to replace it", overwrite=True)
    source = model_source(spec.model)
    out = spec.out or Path("engines") / f"{source.name}-{spec.precision}"
    if out.exists() and not spec.overwrite:
        raise CVDVAEError(f"{out} exists; pass {{overwrite}} to replace it", overwrite=True)
    reason = tensorrt_unavailable_reason() if spec.engine else None
    if reason and spec.require_engine:
        raise CVDVAEError(f"no TensorRT engine can be built here: {reason}")
    exported = Exported(out, notes=[source.note] if source.note else [])
    write_folder(source, spec, out, opset, requested, log)
    if not spec.engine:
        return exported
    if reason:
        exported.no_engine = reason
        return exported
    return add_engine(out, spec.engine_settings, spec.require_engine, log, warn, exported)


def write_folder(source: Any, spec: ExportSpec, out: Path, opset: int, requested: dict, log: Log) -> None:
    """Trace, clean, stamp, validate and write the folder, atomically: all of it or nothing."""
    model = source.model
    traced = model if spec.precision == "fp32" else copy.deepcopy(model).cast_weights(DTYPES[spec.precision])
    consistent = spec.model.consistent
    log(f"model: {source.description} ({sum(p.numel() for p in model.parameters()):,} parameters), "
        f"precision {spec.precision}")
    with atomic_folder(out, overwrite=spec.overwrite) as tmp:
        onnx_path = tmp / ONNX_NAME
        log("tracing to ONNX (torch.export)")
        proto = graph.trace_to_onnx(traced, consistent=consistent, opset=opset, verbose=spec.verbose)
        if graph.random_ops(proto):
            raise RuntimeError(f"the graph contains random operators {graph.random_ops(proto)}")
        log("simplifying (onnxslim), shape inference")
        proto = onnx_passes.infer_shapes(onnx_passes.simplify(proto))
        meta = metadata.graph_metadata(traced, spec.precision, consistent, metadata.graph_sha256(proto))
        metadata.stamp(proto, meta)
        written = onnx_passes.save(proto, onnx_path)
        del proto
        onnx_passes.check(onnx_path)
        log(f"wrote {ONNX_NAME} ({sum(f.stat().st_size for f in written) / 2**20:.1f} MiB), onnx.checker passed")
        meta.update(onnx_sha256=sha256_file(onnx_path), source=source.description, profile=requested)
        if spec.precision != "fp32":
            meta["fp32_islands"] = FP32_ISLANDS
        if spec.validate:
            from .validate import validate

            log("validating the graph against PyTorch")
            report, cases, computed_by = validate(onnx_path, model, spec.precision, list(spec.validate_shapes),
                                                  traced, consistent)
            meta["validation"] = report.to_dict()
            log(report.summary())
            if not report.passed:
                raise RuntimeError(f"{report.summary()}; nothing was written (exporting without validation "
                                   "skips the check)")
            reference.save(tmp / reference.REFERENCE_NAME, cases, computed_by)
        write_meta(tmp / META_NAME, meta)


def add_engine(folder: Path, settings: EngineSettings, required: bool, log: Log, warn: Log,
               exported: Exported | None = None) -> Exported:
    """Build, check and record ``engine.plan`` in a finished folder. A build TensorRT cannot finish
    is ``no_engine`` (raised when ``required``); an engine that fails its check always raises.
    Either way the validated ONNX folder stays."""
    exported = exported or Exported(folder)
    try:
        exported.engine = build_engine(folder, settings, log, warn)
    except EngineBuildFailed as err:
        if required:
            raise
        exported.no_engine = str(err)
    return exported


def add_engine_to_folder(folder: Path, settings: EngineSettings, overwrite: bool, log: Log, warn: Log) -> Exported:
    """``engine.plan`` for a folder exported earlier (e.g. on a machine without a GPU), with the
    profile recorded there unless ``settings`` override it. Any failure is an error."""
    plan = folder / PLAN_NAME
    if not (folder / META_NAME).is_file() or not (folder / ONNX_NAME).is_file():
        raise CVDVAEError(f"{folder} is not an export folder (needs {ONNX_NAME} and {META_NAME})")
    if plan.exists() and not overwrite:
        raise CVDVAEError(f"{plan} exists; pass {{overwrite}} to replace it", overwrite=True)
    meta = read_meta(folder / META_NAME)
    if sha256_file(folder / ONNX_NAME) != meta.get("onnx_sha256"):
        raise CVDVAEError(f"{folder / ONNX_NAME} does not match its meta.json (sha256); re-run the export")
    profile.requested(meta.get("profile"), settings.profile_overrides)  # bad values fail before anything else
    reason = tensorrt_unavailable_reason()
    if reason:
        raise CVDVAEError(f"no TensorRT engine can be built here: {reason}")
    return add_engine(folder, settings, True, log, warn)
