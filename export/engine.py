"""Adding a checked ``engine.plan`` to a finished export folder (``export.exporter``).

Build with Polygraphy (``export.tensorrt``), run the new plan through the runtime against the
folder's FP32 reference (``export.engine_check``), and only when it passes replace
``engine.plan`` and record it in ``meta.json``: TensorRT version, GPU, compute capability,
profile and why that size, TF32, the plan's sha256 and the check. A plan that fails is never
written; the folder keeps what it had. The timing cache (by default one per TensorRT version
and kind of GPU, under ``$CVDVAE_HOME``, shared by every build there) is read before the build
and written last, so failing to write it cannot lose a finished plan.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from cvdvae.errors import CVDVAEError
from cvdvae.fileio import atomic_path, sha256_file, write_bytes
from runtime.backends.cuda import TorchCuda
from runtime.compiled_cache import tensorrt_timing_cache
from runtime.model_files import META_NAME, ONNX_NAME, PLAN_NAME, ModelFiles, locate, write_meta

from . import profile, reference
from .engine_check import check_engine
from .tensorrt import BuilderSettings, BuildOptions, build_plan, polygraphy_version

DEBUG_HINT = "docs/guides/debugging-engine.md shows the polygraphy commands that find the first bad layer"


class EngineRejected(RuntimeError):
    """The engine ran but disagrees with the FP32 reference (or produced NaN/Inf)."""


@dataclass(frozen=True)
class EngineSettings:
    """An engine build: the builder's settings (a ``timing_cache`` of None here means the one this
    TensorRT version and GPU share), the profile asked for, and whether to check the engine."""
    builder: BuilderSettings = field(default_factory=BuilderSettings)
    profile_overrides: dict[str, int] = field(default_factory=dict)
    validate: bool = True


def load_reference(folder: Path, validate: bool) -> tuple[list[reference.Case] | None, str | None]:
    if not validate:
        return None, None
    path = folder / reference.REFERENCE_NAME
    if not path.is_file():
        raise CVDVAEError(f"{path} not found (the folder was exported without validation, or by an older "
                          "cvdvae), so the engine cannot be checked: re-export, or set {validate} to build an "
                          "unchecked engine", validate=False)
    return reference.load(path)


def build_engine(folder: Path, settings: EngineSettings, log: Callable[[str], None],
                 warn: Callable[[str], None], *, cuda: Any = None, trt: Any = None) -> dict[str, Any]:
    """Build, check and record an engine for ``folder``; returns meta.json's ``engine`` entry.
    ``cuda`` and ``trt`` stand in for CUDA and TensorRT in tests."""
    built_with = f"polygraphy {polygraphy_version()}"
    files = locate(folder)
    meta = files.meta
    if files.onnx is None or sha256_file(files.onnx) != meta.get("onnx_sha256"):
        raise CVDVAEError(f"{folder / ONNX_NAME} is missing or does not match its meta.json (sha256); re-export")
    cases, source = load_reference(folder, settings.validate)
    cuda = cuda or TorchCuda()
    request = profile.requested(meta.get("profile"), settings.profile_overrides)
    bytes_per_value = 4 if files.precision == "fp32" else 2
    chosen, basis = profile.resolve(request, files.activation_bytes_per_sample(bytes_per_value), cuda.free_memory())
    log(f"building the TensorRT engine (Polygraphy; B {chosen.min_batch}..{chosen.max_batch}, "
        f"n {chosen.min_n}..{chosen.max_n}, TF32 {'on' if settings.builder.tf32 else 'off'})")
    start = time.perf_counter()
    builder = settings.builder
    timing_cache = builder.timing_cache or default_timing_cache(cuda)
    built = build_plan(files.onnx, BuildOptions(chosen.shapes(files.lr_size, files.noise_dim),
                                                replace(builder, timing_cache=timing_cache)), warn)
    record = {"tensorrt_version": built.tensorrt_version, **cuda.info(), "profile": chosen.to_dict(),
              "profile_basis": basis, "tf32": builder.tf32, "plan_sha256": hashlib.sha256(built.plan).hexdigest(),
              "workspace_gib": builder.workspace_gib, "builder_optimization_level": builder.optimization_level,
              "timing_cache": str(timing_cache),
              "built_with": built_with, "build_s": round(time.perf_counter() - start, 1)}
    with atomic_path(folder / PLAN_NAME) as plan:
        plan.write_bytes(built.plan)
        candidate = ModelFiles(folder, {**meta, "engine": record}, files.onnx, plan, "plan")
        record["validation"] = check_candidate(candidate, cases, source, builder.tf32, log, warn, cuda=cuda, trt=trt)
    meta.update(profile=request, engine=record)
    write_meta(folder / META_NAME, meta)
    if built.timing_cache is not None:
        try:
            if builder.timing_cache is None:
                timing_cache.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(timing_cache, built.timing_cache)
        except OSError as err:
            warn(f"the timing cache could not be written to {timing_cache} ({err}); the engine is kept")
    return record


def default_timing_cache(cuda: Any) -> Path:
    """Where builds on this TensorRT version and this kind of GPU share their timing cache: a
    later build reads it first and skips the tactic timings already made."""
    import tensorrt

    info = cuda.info()
    return tensorrt_timing_cache(tensorrt.__version__, info["gpu"], info["compute_capability"])


def check_candidate(candidate: ModelFiles, cases: list[reference.Case] | None, source: str | None, tf32: bool,
                    log: Callable[[str], None], warn: Callable[[str], None], *, cuda: Any, trt: Any) -> dict[str, Any]:
    """Run a plan not yet in place through the runtime against the reference; raise when it fails."""
    if cases is None:
        warn("the engine was not checked (validation off); meta.json records it as unchecked")
        return {"skipped": "validation off", "passed": None}
    from runtime.backends.tensorrt import TensorRTBackend

    check = check_engine(TensorRTBackend(candidate, cuda=cuda, trt=trt), cases, source, candidate.precision, tf32)
    log(check.summary())
    if not check.passed:
        raise EngineRejected(f"{check.summary()}; engine.plan was not written and the ONNX folder is kept "
                             f"({DEBUG_HINT})")
    return check.to_dict()
