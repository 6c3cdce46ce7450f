"""TensorRT plans from the ONNX graph, built with Polygraphy's TensorRT loaders (TensorRT 10.x and 11.x).

``NetworkFromOnnxPath`` -> ``CreateConfig`` (profile, workspace, optimization level,
progress) -> ``PostprocessConfig`` (what we insist on ourselves) -> ``EngineBytesFromNetwork``.

- The precision is the graph's own: TensorRT 11 removed the FP16/BF16 builder flags and every
  network is strongly typed (the flag is set where the installed TensorRT still has it).
- TF32 is cleared unless asked for, and checked: TensorRT enables it by default, and an
  "fp32" engine computing its convolutions in TF32 would not give the same samples as the
  other backends.
- A timing cache made on another GPU or TensorRT version is one warning line, and the build
  goes on without it (Polygraphy would drop it in silence).
- The plan and the updated timing cache are returned, not written: the caller writes the
  plan first, so that failing to write the cache cannot lose a finished plan.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cvdvae.errors import CVDVAEError


class EngineBuildFailed(RuntimeError):
    """TensorRT did not produce a plan (parser error, out of memory, no tactic...)."""


@dataclass(frozen=True)
class BuilderSettings:
    """What TensorRT's builder is told besides the shapes."""
    workspace_gib: float = 8.0
    optimization_level: int = 3
    tf32: bool = False
    timing_cache: Path | None = None  # read before the build and returned after it; None: none
    progress: bool = True


@dataclass(frozen=True)
class BuildOptions:
    shapes: dict[str, tuple[tuple[int, ...], ...]]   # input -> (min, opt, max) shapes
    builder: BuilderSettings = field(default_factory=BuilderSettings)


@dataclass
class BuiltPlan:
    plan: bytes
    tensorrt_version: str
    timing_cache: bytes | None
    warnings: list[str] = field(default_factory=list)


def configure(trt: Any, config: Any, *, tf32: bool, timing_cache: bytes | None) -> list[str]:
    """Settle TF32 and the timing cache on a builder config; returns warning lines."""
    if tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    if config.get_flag(trt.BuilderFlag.TF32) != tf32:
        raise EngineBuildFailed(f"TensorRT would not {'set' if tf32 else 'clear'} the TF32 builder flag")
    warnings = []
    if timing_cache is not None:
        cache = None
        try:
            cache = config.create_timing_cache(timing_cache)
        except Exception:  # noqa: BLE001 - a corrupt cache raises TensorRT's own error types
            pass
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            warnings.append("the timing cache does not fit this GPU or TensorRT version (or is corrupt): "
                            "building without it, and a new one is saved")
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return warnings


def _progress_monitor(trt: Any) -> Any:
    """An IProgressMonitor that draws one line per build phase on stderr."""

    class BuildProgress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._steps[phase_name] = max(num_steps, 1)

        def step_complete(self, phase_name: str, step: int) -> bool:
            total = self._steps.get(phase_name, 1)
            done = int(30 * (step + 1) / total)
            sys.stderr.write(f"\r  {phase_name[:40]:<40} [{'#' * done}{'.' * (30 - done)}] {step + 1}/{total}")
            sys.stderr.flush()
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            sys.stderr.write("\r" + " " * 90 + "\r")
            self._steps.pop(phase_name, None)

    return BuildProgress()


def build_plan(onnx_path: Path, options: BuildOptions, warn: Callable[[str], None]) -> BuiltPlan:
    """Parse and build; ``EngineBuildFailed`` with TensorRT's reason when no plan comes out."""
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath
    from polygraphy.backend.trt import PostprocessConfig
    from polygraphy.backend.trt import Profile as TrtProfile
    from polygraphy.exception import PolygraphyException

    settings = options.builder
    profile = TrtProfile()
    for name, (low, opt, high) in options.shapes.items():
        profile.add(name, min=low, opt=opt, max=high)
    cache_in = settings.timing_cache.read_bytes() if settings.timing_cache and settings.timing_cache.is_file() else None
    if settings.timing_cache and cache_in is None:
        cache_in = b""
    settled: dict[str, Any] = {}

    def settle(builder: Any, network: Any, config: Any) -> None:
        settled["config"] = config
        settled["warnings"] = configure(trt, config, tf32=settings.tf32, timing_cache=cache_in)

    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=strongly_typed_flag_exists(trt))
    config = CreateConfig(tf32=settings.tf32, profiles=[profile], builder_optimization_level=settings.optimization_level,
                          memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(settings.workspace_gib * 2**30)},
                          progress_monitor=_progress_monitor(trt) if settings.progress else None)
    try:
        plan = EngineBytesFromNetwork(network, config=PostprocessConfig(config, settle))()
    except PolygraphyException as err:
        raise EngineBuildFailed(f"TensorRT could not build the engine ({str(err).splitlines()[0]}); "
                                "try a smaller --workspace or --max-batch/--max-n") from None
    for line in settled.get("warnings", []):
        warn(line)
    cache_out = None
    if settings.timing_cache is not None:
        cache_out = bytes(memoryview(settled["config"].get_timing_cache().serialize()))
    return BuiltPlan(bytes(memoryview(plan)), trt.__version__, cache_out, settled.get("warnings", []))


def strongly_typed_flag_exists(trt: Any) -> bool:
    """TensorRT 10.x needs the flag for a graph that carries its own precision; in 11.x every
    network is strongly typed and the flag may be gone."""
    return hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


def polygraphy_version() -> str:
    try:
        import polygraphy
    except ImportError:
        raise CVDVAEError("building engines needs Polygraphy: pip install 'cvdvae[gpu]'") from None
    return polygraphy.__version__
