"""``model.onnx`` through OpenVINO on the CPU: compiled once, one inference request reused.

FP32 unless asked (``INFERENCE_PRECISION_HINT``: OpenVINO would otherwise pick bf16 on CPUs
that have it), threads set, the same seeded noise as every backend. Asked for bf16, it runs
the convolutions in bf16 and keeps the groups of ops the precision study chose in float32
(``openvino_precision``), on CPUs with native bf16 only (``cpu_features``). The graph keeps its
dynamic B and n: reshaped to static shapes, OpenVINO 2026.4 returns correct samples on
the first call and different, wrong ones on later calls of the same compiled model with
the same inputs; with dynamic shapes every call is bit-identical (tests hold it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from cvdvae.errors import CVDVAEError

from ..model_files import ModelFiles, verify_onnx
from ..timings import Timings
from .cpu_features import require_bf16
from .host_memory import HostCalls, activation_limited_samples, output_names
from .interface import Backend, Sampled
from .openvino_precision import REQUIRES, SHIPPED_FP32_GROUPS, classify, pin_to_fp32

PRECISIONS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}
PRECISION_NAMES = {value: key for key, value in PRECISIONS.items()}
# OpenVINO gains a little per sample with bigger calls while memory grows with them: four
# FFHQ-256 samples per call (README, "Benchmark": the call sizes measured).
CALL_BUDGET = int(4.5 * 2**30)


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise CVDVAEError("OpenVINO is not installed: pip install 'cvdvae[cpu]' (or openvino)") from None
    return openvino


@dataclass
class OpenVINOBackend(Backend):
    files: ModelFiles
    max_batch: int | None = None
    max_n: int | None = None
    threads: int = 0
    inference_precision: str = "fp32"  # what OpenVINO computes in; the graph's own precision is the floor
    fp32_groups: tuple[str, ...] | None = None  # under bf16, kept in float32 (None: the study's choice)
    profile: bool = False              # keep OpenVINO's per-layer performance counters
    name: str = "openvino"
    provider: str | None = "CPU"
    note: str | None = None
    rows_independent: bool = True  # measured: row b of a call is bit-identical alone (runtime.sampling)
    timings: Timings = field(default_factory=Timings)

    def __post_init__(self) -> None:
        ov = import_openvino()
        start = time.perf_counter()
        path = verify_onnx(self.files)
        core = ov.Core()
        if self.inference_precision == "bf16":
            require_bf16()
            self.fp32_groups = SHIPPED_FP32_GROUPS if self.fp32_groups is None else tuple(self.fp32_groups)
        else:
            self.fp32_groups = ()
        try:
            model = load_model(ov, core, path, self.fp32_groups)
            self.compiled = core.compile_model(model, "CPU", compile_config(self.inference_precision, self.threads,
                                                                            self.profile))
        except RuntimeError as err:
            raise CVDVAEError(f"OpenVINO cannot load {path}: {str(err).strip().splitlines()[0]}") from None
        self.request = self.compiled.create_infer_request()
        ran = PRECISION_NAMES.get(self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(), "fp32")
        self.precision = self.files.precision if ran == "fp32" else ran
        self.max_n, self.max_batch = activation_limited_samples(self.files, self.max_n, self.max_batch, CALL_BUDGET)
        self._calls = HostCalls(self.files, self.run, self.timings)
        self.timings.load = time.perf_counter() - start

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """The graph on explicit inputs (noise included): ``sr`` and, where the graph has it, its
        ``non_finite`` count. What ``sample`` calls with seeded noise."""
        results = self.request.infer(feeds)
        sr, *count = (results[self.compiled.output(name)].copy() for name in output_names(self.files))
        return sr, count[0] if count else None

    def sample_rows(self, lr: np.ndarray | None, seeds: Sequence[int], first_sample: int,
                    temperature: np.ndarray) -> Sampled:
        return self._calls.sample_rows(lr, seeds, first_sample, temperature)

    def layer_times(self) -> list[dict[str, Any]]:
        """The last call's per-layer times (with ``profile``): name, type, kernel, microseconds."""
        return [{"name": p.node_name, "type": p.node_type, "kernel": p.exec_type,
                 "us": p.real_time.total_seconds() * 1e6} for p in self.request.get_profiling_info()]


def compile_config(precision: str, threads: int = 0, profile: bool = False) -> dict[str, Any]:
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY",
                              "PERF_COUNT": profile}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def load_model(ov: Any, core: Any, path: Any, fp32_groups: Sequence[str] = ()) -> Any:
    """The graph as OpenVINO reads it, with the ops of ``fp32_groups`` pinned to float32."""
    model = core.read_model(str(path))
    if not fp32_groups:
        return model
    groups = classify(model)
    unknown = sorted(set(fp32_groups) - set(groups))
    if unknown:
        raise CVDVAEError(f"unknown precision group(s) {', '.join(unknown)}: choose from {', '.join(groups)}")
    for group, needed in REQUIRES.items():
        if group in fp32_groups and not set(needed) <= set(fp32_groups):
            raise CVDVAEError(f"the {group} precision group is kept in float32 only with {' and '.join(needed)} "
                              "(OpenVINO cannot run the mix otherwise)")
    return pin_to_fp32(ov, model, set().union(*(groups[name] for name in fp32_groups)))
