"""``engine.plan`` through TensorRT 10.x / 11.x, written for throughput and never a silent wrong answer.

- Before deserializing: the plan's sha256, the TensorRT version and the GPU's compute
  capability are checked against ``meta.json``; after: the engine's I/O names, dtypes and
  shapes, so a plan copied from another export is refused with the reason.
- Device I/O buffers are allocated once, at the profile's largest call; a call of shape
  (B, n) uses their prefix, so every address stays fixed.
- One execution context per (B, n), its input shapes set once: a CUDA graph captured on a
  context stays valid because nothing about that context changes afterwards. All contexts
  share one activation block (they run one at a time on one stream).
- The first call of a shape runs eagerly, then its graph is captured; later calls replay
  it. Every enqueue result is checked; a refused capture is remembered and never retried.
- Calls below the profile's minimum B or n are padded (repeating the last row, adding
  samples beyond the asked ones) and the padding is dropped from the result.
- The seeded noise is generated on the device straight into the engine's input; results
  come back through pinned host memory.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from cvdvae.errors import CVDVAEError
from cvdvae.noise_recipe import Noise, compose

from ..model_files import ModelFiles
from ..timings import Timings
from .cuda import CaptureRefused, TorchCuda
from .interface import Backend, Sampled, sampled
from .noise_cache import NoiseCache


def rebuild_hint(files: ModelFiles) -> str:
    return f"rebuild it on this machine: cvdvae export --engine-only {files.folder} --overwrite"


def check_engine_meta(files: ModelFiles, plan: bytes, trt_version: str, gpu: dict[str, Any]) -> None:
    """Plans only run on the TensorRT version and GPU architecture that built them, and only
    beside the meta.json written with them."""
    engine = files.meta.get("engine") or {}
    if not engine:
        raise CVDVAEError(f"{files.folder}/meta.json records no engine build; {rebuild_hint(files)}")
    digest = hashlib.sha256(plan).hexdigest()
    if engine.get("plan_sha256") != digest:
        raise CVDVAEError(f"{files.plan} is not the engine meta.json describes (sha256 {digest[:12]}..., "
                          f"recorded {str(engine.get('plan_sha256'))[:12]}...); {rebuild_hint(files)}")
    if engine.get("tensorrt_version") != trt_version:
        raise CVDVAEError(f"engine built with TensorRT {engine.get('tensorrt_version')}, this is {trt_version}; "
                          f"{rebuild_hint(files)}")
    if engine.get("compute_capability") != gpu["compute_capability"]:
        raise CVDVAEError(f"engine built for compute capability {engine.get('compute_capability')} "
                          f"({engine.get('gpu')}), this GPU is {gpu['compute_capability']} ({gpu['gpu']}); "
                          f"{rebuild_hint(files)}")


def expected_io(files: ModelFiles) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (mode, shape with -1 for B and n): the contract's graph for this meta.json."""
    big, dim = files.hr_size, files.noise_dim
    io = {"noise": ("INPUT", (-1, -1, dim)), "temperature": ("INPUT", (-1, -1)),
          "sr": ("OUTPUT", (-1, -1, 3, big, big))}
    if files.conditional:
        io["lr"] = ("INPUT", (-1, 3, files.lr_size, files.lr_size))
    if files.reports_non_finite:
        io["non_finite"] = ("OUTPUT", (-1, -1))
    return io


def output_names(files: ModelFiles) -> tuple[str, ...]:
    return ("sr", "non_finite") if files.reports_non_finite else ("sr",)


def input_names(files: ModelFiles) -> tuple[str, ...]:
    return ("lr", "noise", "temperature") if files.conditional else ("noise", "temperature")


def check_engine_io(engine: Any, trt: Any, files: ModelFiles) -> None:
    """The engine's I/O must be the contract's, float32, with meta.json's sizes."""
    found = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        found[name] = (engine.get_tensor_mode(name).name, tuple(engine.get_tensor_shape(name)),
                       engine.get_tensor_dtype(name))
    for name, (mode, shape) in expected_io(files).items():
        if name not in found:
            raise CVDVAEError(f"{files.plan} has no tensor {name!r} (it has {', '.join(sorted(found))}); "
                              f"it was not built from this export; {rebuild_hint(files)}")
        got_mode, got_shape, got_dtype = found[name]
        if got_mode != mode or got_shape != shape or got_dtype != trt.DataType.FLOAT:
            raise CVDVAEError(f"{files.plan} does not match meta.json: {name} is {got_mode.lower()} "
                              f"{_dtype_name(got_dtype)} {list(got_shape)}, meta.json says {mode.lower()} float32 "
                              f"{list(shape)}; {rebuild_hint(files)}")
    extra = sorted(set(found) - set(expected_io(files)))
    if extra:
        raise CVDVAEError(f"{files.plan} has tensors the contract lacks ({', '.join(extra)}); {rebuild_hint(files)}")


def _dtype_name(dtype: Any) -> str:
    return {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16"}.get(getattr(dtype, "name", ""), str(dtype))


@dataclass(frozen=True)
class Limits:
    """The engine profile's range of B and n (what one call may be, before padding)."""

    min_batch: int
    max_batch: int
    min_n: int
    max_n: int

    @classmethod
    def of(cls, engine: Any) -> "Limits":
        low, _, high = (tuple(s) for s in engine.get_tensor_profile_shape("noise", 0))
        return cls(low[0], high[0], low[1], high[1])


@dataclass
class _ShapeContext:
    context: Any
    graph: Any = None


@dataclass
class _Buffers:
    """Device I/O at the profile's largest call, pinned host memory for the outputs (no ``lr``
    for a prior-only model, no ``non_finite`` for a graph without that output)."""

    lr: Any
    noise: Any
    temperature: Any
    sr: Any
    sr_host: Any
    non_finite: Any
    non_finite_host: Any

    def views(self, batch: int, n: int, files: ModelFiles) -> "_Buffers":
        """The (B, n) call's tensors: prefixes of the buffers, so their addresses never move."""
        big, dim = files.hr_size, files.noise_dim

        def prefix(flat: Any, *shape: int) -> Any:
            return None if flat is None else flat[:int(np.prod(shape))].view(*shape)

        return _Buffers(prefix(self.lr, batch, 3, files.lr_size, files.lr_size), prefix(self.noise, batch, n, dim),
                        prefix(self.temperature, batch, n), prefix(self.sr, batch, n, 3, big, big),
                        prefix(self.sr_host, batch, n, 3, big, big), prefix(self.non_finite, batch, n),
                        prefix(self.non_finite_host, batch, n))


@dataclass
class TensorRTBackend(Backend):
    files: ModelFiles
    max_batch: int | None = None
    max_n: int | None = None
    use_cuda_graphs: bool = True
    trt: Any = None        # the tensorrt module (a stand-in in tests)
    cuda: Any = None       # a TorchCuda (a stand-in in tests)
    name: str = "tensorrt"
    provider: str | None = "tensorrt"
    note: str | None = None
    timings: Timings = field(default_factory=Timings)
    graph_refusal: str | None = None   # why CUDA graphs are off, once a capture was refused
    _noise: NoiseCache = field(default_factory=NoiseCache)
    _contexts: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        start = time.perf_counter()
        if self.trt is None:
            import tensorrt

            self.trt = tensorrt
        self.cuda = self.cuda or TorchCuda()
        trt, files = self.trt, self.files
        plan = files.plan.read_bytes()
        check_engine_meta(files, plan, trt.__version__, self.cuda.info())
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise CVDVAEError(f"TensorRT could not deserialize {files.plan} (see its message above); "
                              f"{rebuild_hint(files)}")
        check_engine_io(self.engine, trt, files)
        self.limits = Limits.of(self.engine)
        self.max_batch = self._cap(self.max_batch, self.limits.min_batch, self.limits.max_batch, "max_batch")
        self.max_n = self._cap(self.max_n, self.limits.min_n, self.limits.max_n, "max_n")
        self.precision = files.precision
        self._activations = self.cuda.empty(self.engine.device_memory_size_v2, "uint8")
        self._buffers = self._allocate(self.limits.max_batch, self.limits.max_n)
        self.timings.load = time.perf_counter() - start

    def _cap(self, asked: int | None, low: int, high: int, setting: str) -> int:
        if asked is not None and asked < low:
            raise CVDVAEError(f"{{{setting}}} is below the engine profile's minimum {low}; ask for more per call, "
                              "or rebuild the engine with a lower minimum", **{setting: asked})
        return min(asked or high, high)

    def _allocate(self, batch: int, n: int) -> _Buffers:
        f, cuda = self.files, self.cuda
        samples = batch * n * 3 * f.hr_size**2
        lr = cuda.empty(batch * 3 * f.lr_size**2) if f.conditional else None
        counts = (cuda.empty(batch * n), cuda.pinned(batch * n)) if f.reports_non_finite else (None, None)
        return _Buffers(lr, cuda.empty(batch * n * f.noise_dim), cuda.empty(batch * n), cuda.empty(samples),
                        cuda.pinned(samples), *counts)

    def _context_for(self, batch: int, n: int) -> _ShapeContext:
        key = (batch, n)
        if key not in self._contexts:
            self._contexts[key] = _ShapeContext(self._new_context(batch, n))
        return self._contexts[key]

    def _new_context(self, batch: int, n: int) -> Any:
        trt, buf = self.trt, self._buffers.views(batch, n, self.files)
        context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of device memory?)")
        context.set_device_memory(self._activations.data_ptr(), self.engine.device_memory_size_v2)
        names = input_names(self.files)
        for name in names:
            shape = tuple(getattr(buf, name).shape)
            if not context.set_input_shape(name, shape):
                raise RuntimeError(f"TensorRT refused input {name} of shape {list(shape)} (engine profile "
                                   f"B {self.limits.min_batch}..{self.limits.max_batch}, "
                                   f"n {self.limits.min_n}..{self.limits.max_n})")
        for name in (*names, *output_names(self.files)):
            if not context.set_tensor_address(name, getattr(buf, name).data_ptr()):
                raise RuntimeError(f"TensorRT refused the address of {name}")
        if tuple(context.get_tensor_shape("sr")) != tuple(buf.sr.shape):
            raise RuntimeError(f"TensorRT infers sr {list(context.get_tensor_shape('sr'))} for "
                               f"B={batch} n={n}, expected {list(buf.sr.shape)}")
        return context

    def _execute(self, shape: _ShapeContext, batch: int, n: int) -> None:
        if shape.graph is not None:
            self.cuda.replay(shape.graph)
            return
        if not shape.context.execute_async_v3(self.cuda.stream_handle):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for B={batch} n={n} (see TensorRT's message "
                               "above); no output of this call was used")
        if self.use_cuda_graphs and self.graph_refusal is None:
            try:
                shape.graph = self.cuda.capture(lambda: shape.context.execute_async_v3(self.cuda.stream_handle))
            except CaptureRefused as err:
                self.graph_refusal = str(err)  # remembered: running eagerly from now on

    @property  # type: ignore[override]
    def cuda_graphs(self) -> str:
        """For summaries: whether CUDA graphs are in use, and why not."""
        if not self.use_cuda_graphs:
            return "off"
        return "on" if self.graph_refusal is None else f"off (capture refused: {self.graph_refusal})"

    def sample_rows(self, lr: np.ndarray | None, seeds: Sequence[Noise], first_sample: int,
                    temperature: np.ndarray) -> Sampled:
        batch, n = temperature.shape
        if not (1 <= batch <= self.max_batch and 1 <= n <= self.max_n) or len(seeds) != batch:
            raise ValueError(f"a call holds 1..{self.max_batch} rows (a seed each) and 1..{self.max_n} samples, "
                             f"got {batch} rows, {len(seeds)} seeds and {n} samples")
        call_batch, call_n = max(batch, self.limits.min_batch), max(n, self.limits.min_n)
        rows = list(range(batch)) + [batch - 1] * (call_batch - batch)  # padding repeats the last row
        seeds = [seeds[b] for b in rows]
        if lr is not None:
            lr = lr[rows]
        temperature = np.concatenate([temperature, np.repeat(temperature[:, -1:], call_n - n, axis=1)], axis=1)
        buf, torch, cuda = self._buffers.views(call_batch, call_n, self.files), self.cuda.torch, self.cuda
        shape = self._context_for(call_batch, call_n)
        with cuda.on_stream():
            start = cuda.event()
            for seed in dict.fromkeys(seeds):
                noise = self._noise.get_or_make((seed, first_sample, call_n), lambda seed=seed: compose(
                    seed, self.files.noise_dim, call_n, first_sample, cuda.noise, self.files.levels))
                if len(set(seeds)) == 1:
                    buf.noise.copy_(noise.expand(call_batch, call_n, -1))
                else:
                    for b in (b for b, row_seed in enumerate(seeds) if row_seed == seed):
                        buf.noise[b].copy_(noise)
            if lr is not None:
                buf.lr.copy_(torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float32)))
            buf.temperature.copy_(torch.from_numpy(np.ascontiguousarray(temperature, dtype=np.float32)))
            inputs_ready = cuda.event()
            self._execute(shape, call_batch, call_n)
            buf.sr_host.copy_(buf.sr, non_blocking=True)
            if buf.non_finite is not None:
                buf.non_finite_host.copy_(buf.non_finite, non_blocking=True)
            done = cuda.event()
        cuda.synchronize()
        self.timings.noise += cuda.seconds_between(start, inputs_ready)
        self.timings.inference += cuda.seconds_between(inputs_ready, done)
        self.timings.calls += 1
        counts = None if buf.non_finite is None else buf.non_finite_host.numpy()[:batch, :n].copy()
        return sampled(buf.sr_host.numpy()[:batch, :n].copy(), counts)
