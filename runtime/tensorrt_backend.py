"""``engine.plan`` through TensorRT 10.x / 11.x, written for throughput.

Deserialized once, after ``meta.json`` was checked against the installed TensorRT and the
GPU; device buffers allocated once per (B, n) shape and bound with ``set_tensor_address``;
``execute_async_v3`` on one stream; the seeded noise generated on the device straight into
the engine's input; results copied to pinned host memory; one CUDA graph per shape after a
warm-up run (plain execution if capture is refused).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cvdvae.errors import CVDVAEError
from cvdvae.seeding import noise_torch

from .backends import NoiseCache, Timings
from .gpu import gpu_info
from .model_files import ModelFiles


def check_engine_meta(files: ModelFiles, trt_version: str, gpu: dict[str, Any]) -> None:
    """Plans only run on the TensorRT version and GPU architecture that built them."""
    engine = files.meta.get("engine") or {}
    rerun = f"re-run cvdvae-export --engine-only {files.folder} --overwrite on this machine"
    if not engine:
        raise CVDVAEError(f"{files.folder}/meta.json records no engine build; {rerun}")
    if engine.get("tensorrt_version") != trt_version:
        raise CVDVAEError(f"engine built with TensorRT {engine.get('tensorrt_version')}, this is {trt_version}; {rerun}")
    if engine.get("compute_capability") != gpu["compute_capability"]:
        raise CVDVAEError(f"engine built for compute capability {engine.get('compute_capability')} "
                          f"({engine.get('gpu')}), this GPU is {gpu['compute_capability']} ({gpu['gpu']}); {rerun}")


@dataclass
class _ShapeBuffers:
    lr: Any
    noise: Any
    temperature: Any
    sr: Any
    sr_host: Any
    graph: Any = None


@dataclass
class TensorRTBackend:
    files: ModelFiles
    max_batch: int | None = None
    max_n: int | None = None
    use_cuda_graphs: bool = True
    name: str = "tensorrt"
    timings: Timings = field(default_factory=Timings)
    _noise: NoiseCache = field(default_factory=NoiseCache)
    _buffers: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        import tensorrt as trt
        import torch

        start = time.perf_counter()
        check_engine_meta(self.files, trt.__version__, gpu_info())
        self._torch, self._trt = torch, trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.files.plan.read_bytes())
        if self.engine is None:
            raise CVDVAEError(f"TensorRT could not deserialize {self.files.plan}; re-run cvdvae-export --engine-only")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        _, _, biggest = self.engine.get_tensor_profile_shape("noise", 0)
        self.max_batch = min(self.max_batch or biggest[0], biggest[0])
        self.max_n = min(self.max_n or biggest[1], biggest[1])
        self.precision = self.files.precision
        self.timings.load = time.perf_counter() - start

    def _buffers_for(self, batch: int, n: int) -> _ShapeBuffers:
        if (batch, n) not in self._buffers:
            torch, f = self._torch, self.files
            dev = dict(device="cuda", dtype=torch.float32)
            self._buffers[(batch, n)] = _ShapeBuffers(
                lr=torch.empty(batch, 3, f.lr_size, f.lr_size, **dev),
                noise=torch.empty(batch, n, f.noise_dim, **dev),
                temperature=torch.empty(batch, n, **dev),
                sr=torch.empty(batch, n, 3, f.hr_size, f.hr_size, **dev),
                sr_host=torch.empty(batch, n, 3, f.hr_size, f.hr_size, dtype=torch.float32, pin_memory=True),
            )
        return self._buffers[(batch, n)]

    def _bind(self, buf: _ShapeBuffers) -> None:
        for name in ("lr", "noise", "temperature"):
            tensor = getattr(buf, name)
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        self.context.set_tensor_address("sr", buf.sr.data_ptr())

    def _execute(self, buf: _ShapeBuffers) -> None:
        handle = self.stream.cuda_stream
        if buf.graph is not None:
            buf.graph.replay()
            return
        if not self.context.execute_async_v3(handle):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT messages above)")
        if self.use_cuda_graphs:
            buf.graph = self._capture(handle)

    def _capture(self, handle: int) -> Any:
        torch = self._torch
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                self.context.execute_async_v3(handle)
        except RuntimeError:
            return None  # capture refused (e.g. an engine with data-dependent shapes): run eagerly
        return graph

    def sample(self, lr: np.ndarray, seed: int, first_sample: int, temperature: np.ndarray) -> np.ndarray:
        torch = self._torch
        batch, n = lr.shape[0], temperature.shape[0]
        buf = self._buffers_for(batch, n)
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        with torch.cuda.stream(self.stream):
            marks[0].record()
            noise = self._noise.get_or_make((seed, first_sample, n),
                                    lambda: noise_torch(seed, n, self.files.noise_dim, first_sample, device="cuda"))
            buf.noise.copy_(noise.expand(batch, n, -1))
            marks[1].record()
            buf.lr.copy_(torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float32)))
            buf.temperature.copy_(torch.from_numpy(np.ascontiguousarray(temperature, dtype=np.float32)).expand(batch, n))
            self._bind(buf)
            self._execute(buf)
            buf.sr_host.copy_(buf.sr, non_blocking=True)
            marks[2].record()
        self.stream.synchronize()
        self.timings.noise += marks[0].elapsed_time(marks[1]) / 1000
        self.timings.inference += marks[1].elapsed_time(marks[2]) / 1000
        self.timings.calls += 1
        return buf.sr_host.numpy().copy()
