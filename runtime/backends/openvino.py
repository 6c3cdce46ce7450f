"""``model.onnx`` through OpenVINO on the CPU: compiled once, one inference request reused.

FP32 unless asked (``INFERENCE_PRECISION_HINT``: OpenVINO would otherwise pick bf16 on CPUs
that have it), threads set, the same seeded noise as every backend. Asked for bf16, it runs
the convolutions in bf16 and keeps the groups of ops the precision study chose in float32
(``openvino_precision``), on CPUs with native bf16 only (``cpu_features``). The graph keeps its
dynamic B and n: reshaped to static shapes, OpenVINO 2026.4 returns correct samples on
the first call and different, wrong ones on later calls of the same compiled model with
the same inputs; with dynamic shapes every call is bit-identical (tests hold it).

Compiled once per machine, not per start: the compiled model is exported into the folder's cache
(``runtime.compiled_cache``) and imported at the next start, keyed by the graph's sha256, the
OpenVINO version, the CPU (its name and feature flags) and what compiling fixes (the precision, the
float32 groups, the latency hint). Threads and performance counters are given at import, which
honours them, so they do not split the cache. A kept model that does not fit is said in ``note``
and compiled again. OpenVINO's own ``CACHE_DIR`` is not used: it rebuilds a damaged blob without a
word (measured with 2026.4), and it cannot fall back to ``$CVDVAE_HOME`` for a read-only folder.

A kept model is checked whole and mapped, not read (``compiled_cache.read_entry``), then imported
on a thread of its own (``Opening``): OpenVINO lets go of the GIL while it imports, so the caller's
first noise and inputs are made meanwhile, and the first call (or ``wait_ready``) waits for what is
left of it. One that cannot be imported after all is compiled again on that thread, its note set
when it is done.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cvdvae.errors import CVDVAEError
from cvdvae.noise_recipe import Noise

from ..compiled_cache import GRAPH, cache_folder, entry_path, read_entry, rebuilt_note, remembered_sha256, write_entry
from ..model_files import ModelFiles, verify_onnx
from ..timings import Timings
from .cpu_features import cpu_identity, require_bf16
from .host_memory import HostCalls, activation_limited_samples, output_names
from .interface import Backend, Sampled
from .openvino_precision import REQUIRES, SHIPPED_FP32_GROUPS, classify, pin_to_fp32

PRECISIONS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}
# OpenVINO gains a little per sample with bigger calls while memory grows with them: four
# FFHQ-256 samples per call (docs/benchmarks/index.md: the call sizes measured).
CALL_BUDGET = int(4.5 * 2**30)
# Given again at import, and honoured there: they are not part of the cache key.
IMPORT_SETTINGS = ("INFERENCE_NUM_THREADS", "PERF_COUNT")


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
        self._start = time.perf_counter()
        path = verify_onnx(self.files)
        core = ov.Core()
        if self.inference_precision == "bf16":
            require_bf16()
            self.fp32_groups = SHIPPED_FP32_GROUPS if self.fp32_groups is None else tuple(self.fp32_groups)
        else:
            self.fp32_groups = ()
        self._opening = self._cached_or_compiled(ov, core, path)
        # What OpenVINO is asked for is what it computes in: bf16 only where require_bf16 found it.
        self.precision = self.files.precision if self.inference_precision == "fp32" else self.inference_precision
        self.max_n, self.max_batch = activation_limited_samples(self.files, self.max_n, self.max_batch, CALL_BUDGET)
        self._calls = HostCalls(self.files, self.run, self.timings)

    @property
    def compiled(self) -> Any:
        return self._ready().compiled

    @property
    def request(self) -> Any:
        return self._ready().request

    def wait_ready(self) -> None:
        self._ready()

    def _ready(self) -> "Opening":
        self._opening.wait()
        self.timings.load = self._opening.done_at - self._start
        return self._opening

    def _cached_or_compiled(self, ov: Any, core: Any, path: Path) -> "Opening":
        """The compiled model: imported from the cache when an entry made for this key is there,
        else compiled and kept for the next start."""
        config = compile_config(self.inference_precision, self.threads, self.profile)
        folder = cache_folder(self.files.folder)
        graph = self.files.meta.get("onnx_sha256") or remembered_sha256(path, folder)  # verified by verify_onnx
        key = cache_key(ov, core, graph, config, self.fp32_groups)
        entry = None if folder is None else entry_path(folder, "openvino", key)
        if entry is None:
            self.note = (f"the compiled OpenVINO model cannot be kept (neither {self.files.folder} nor $CVDVAE_HOME "
                         "is writable): it is compiled at every start")
            return Opening(lambda: self._compiled(ov, core, path, config))
        payload, why = read_entry(entry, key, mapped=True)
        if payload is None:
            return Opening(lambda: self._compiled_and_kept(ov, core, path, config, entry, key, why))
        at_import = {name: value for name, value in config.items() if name in IMPORT_SETTINGS}
        weights = np.frombuffer(payload, np.uint8) if isinstance(payload, bytes) else payload

        def imported() -> Any:
            try:
                return core.import_model(ov.Tensor(weights, shared_memory=True), "CPU", at_import)
            except RuntimeError as err:
                why = f"could not be imported ({_first_line(err)})"
                return self._compiled_and_kept(ov, core, path, config, entry, key, why)

        return Opening(imported, weights=weights, background=True)

    def _compiled(self, ov: Any, core: Any, path: Path, config: dict[str, Any]) -> Any:
        start = time.perf_counter()
        try:
            compiled = core.compile_model(load_model(ov, core, path, self.fp32_groups), "CPU", config)
        except RuntimeError as err:
            raise CVDVAEError(f"OpenVINO cannot load {path}: {_first_line(err)}") from None
        self.timings.compile = time.perf_counter() - start
        return compiled

    def _compiled_and_kept(self, ov: Any, core: Any, path: Path, config: dict[str, Any], entry: Path,
                           key: dict[str, str], why: str | None) -> Any:
        """Compiled afresh, and kept at ``entry`` for the next start; ``note`` says why, when an entry was there."""
        compiled = self._compiled(ov, core, path, config)
        exported = io.BytesIO()
        compiled.export_model(exported)
        kept = write_entry(entry, key, exported.getbuffer())
        self.note = rebuilt_note("the compiled OpenVINO model", entry, why, kept, "compiled again")
        return compiled

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """The graph on explicit inputs (noise included): ``sr`` and, where the graph has it, its
        ``non_finite`` count. What ``sample`` calls with seeded noise."""
        # Inputs read in place and outputs copied once (not into OpenVINO's tensors, then out again).
        opening = self._ready()  # once per call: the compiled model and its request together
        results = opening.request.infer(feeds, share_inputs=True, share_outputs=True)
        sr, *count = (results[opening.compiled.output(name)].copy() for name in output_names(self.files))
        return sr, count[0] if count else None

    def sample_rows(self, lr: np.ndarray | None, seeds: Sequence[Noise], first_sample: int,
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


def cache_key(ov: Any, core: Any, graph_sha256: str, config: dict[str, Any],
              fp32_groups: Sequence[str]) -> dict[str, str]:
    """What a compiled model depends on: the graph, OpenVINO, the CPU, and the settings compiled in."""
    compiled_in = {name: str(value) for name, value in sorted(config.items()) if name not in IMPORT_SETTINGS}
    return {GRAPH: graph_sha256, "OpenVINO": ov.__version__, **cpu_identity(),
            "OpenVINO's CPU": " ".join(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
            "settings": ", ".join(f"{name}={value}" for name, value in compiled_in.items()),
            "fp32 groups": ",".join(fp32_groups)}


class Opening:
    """A compiled model being made: at once (compiling; its errors raised here), or on a thread of its
    own (importing a kept one). ``weights``: the memory an imported model reads its weights from (the
    mapped entry), which it does not keep alive itself: let go of after the model and its request."""

    def __init__(self, make: Callable[[], Any], weights: np.ndarray | None = None, background: bool = False):
        self.weights, self.done_at = weights, 0.0
        self._made: Any = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._waiting = threading.Lock()  # one request, whichever thread waits first
        if background:
            self._thread = threading.Thread(target=self._make, args=(make,), name="openvino-import")
            self._thread.start()
        else:
            self._make(make)
            self.wait()

    def _make(self, make: Callable[[], Any]) -> None:
        try:
            self._made = make()
        except BaseException as err:  # raised to whoever waits
            self._error = err
        self.done_at = time.perf_counter()

    def wait(self) -> None:
        """Once the model is ready (``compiled``, ``request``); raises what making it raised."""
        with self._waiting:
            if "compiled" in self.__dict__:
                return
            if self._thread is not None:
                self._thread.join()
            if self._error is not None:
                raise self._error
            self.compiled = self._made
            self.request = self.compiled.create_infer_request()
            self._made = None

    def __del__(self) -> None:  # never while importing: the thread holds this object until it ends
        for name in ("request", "compiled", "_made"):
            self.__dict__.pop(name, None)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


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
