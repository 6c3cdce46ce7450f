"""TensorRT engine building (10.x and 11.x): strongly typed, one profile over B and n.

The precision is the ONNX graph's own (TensorRT 11 removed the FP16/BF16 builder flags;
every network is strongly typed). The strongly-typed flag is written symbolically because
its enum value changed between 10 and 11.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cvdvae.fileio import write_bytes
from runtime.gpu import gpu_info


@dataclass(frozen=True)
class Profile:
    """min/opt/max of B (images) and n (samples per image)."""

    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 4
    min_n: int = 1
    opt_n: int = 8
    max_n: int = 16

    def __post_init__(self) -> None:
        for what, lo, opt, hi in (("B", self.min_batch, self.opt_batch, self.max_batch),
                                  ("n", self.min_n, self.opt_n, self.max_n)):
            if not 1 <= lo <= opt <= hi:
                raise ValueError(f"profile for {what} must satisfy 1 <= min <= opt <= max, got {lo}/{opt}/{hi}")

    def shapes(self, lr_size: int, noise_dim: int) -> dict[str, tuple[tuple[int, ...], ...]]:
        """Per input: (min, opt, max) shapes."""
        b = (self.min_batch, self.opt_batch, self.max_batch)
        n = (self.min_n, self.opt_n, self.max_n)
        return {
            "lr": tuple((bi, 3, lr_size, lr_size) for bi in b),
            "noise": tuple((bi, ni, noise_dim) for bi, ni in zip(b, n)),
            "temperature": tuple((bi, ni) for bi, ni in zip(b, n)),
        }

    def to_dict(self) -> dict:
        return asdict(self)


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


def build_engine(onnx_path: Path, plan_path: Path, *, lr_size: int, noise_dim: int, profile: Profile,
                 workspace_gib: float = 8.0, optimization_level: int = 3, timing_cache: Path | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Parse, build and atomically write ``plan_path``; returns what meta.json records."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    config.builder_optimization_level = optimization_level
    trt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.shapes(lr_size, noise_dim).items():
        trt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(trt_profile)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    if progress:
        config.progress_monitor = _progress_monitor(trt)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT failed to build the engine (see the messages above); "
                           "try a smaller --workspace or --max-batch/--max-n")
    write_bytes(plan_path, memoryview(plan))
    if cache is not None:
        write_bytes(timing_cache, memoryview(cache.serialize()))
    return {"tensorrt_version": trt.__version__, **gpu_info(), "profile": profile.to_dict(),
            "workspace_gib": workspace_gib, "builder_optimization_level": optimization_level,
            "timing_cache": str(timing_cache) if timing_cache else None}
