"""Recording stand-ins for TensorRT and CUDA, so the GPU path's logic runs (and fails) on a CPU.

``FakeCuda`` has ``runtime.cuda.TorchCuda``'s shape over CPU tensors. While it captures, the
fake execution context records its enqueue instead of running it; a replay runs what was
recorded, with the shapes and addresses of capture time, on the buffers' current contents,
as a real CUDA graph would. A backend that replays a stale graph, changes a context's
shapes after capture, or ignores a failed enqueue gets wrong numbers or a recorded
violation.

``FakeTensorRT`` is a module-like object: a plan is JSON describing the engine (I/O,
profile) and naming an entry of ``COMPUTE``, the function it computes.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cvdvae.seeding import noise_torch
from runtime.backends.cuda import CaptureRefused
from runtime.model_files import ModelFiles

# ------------------------------------------------------------------------------ CUDA


@dataclass
class FakeGraph:
    thunks: list[Callable[[], None]]


class FakeCuda:
    def __init__(self, refuse_capture: bool = False, free_bytes: int = 80 * 2**30):
        self.torch = torch
        self.stream_handle = 7
        self.refuse_capture = refuse_capture
        self.free_bytes = free_bytes
        self.recording: list | None = None
        self.captures = self.replays = 0
        self.memory: dict[int, torch.Tensor] = {}   # address -> the allocation starting there

    def info(self) -> dict[str, Any]:
        return {"gpu": "Fake GPU", "compute_capability": "9.0"}

    def free_memory(self) -> int:
        return self.free_bytes

    def empty(self, count: int, dtype: str = "float32") -> torch.Tensor:
        tensor = torch.full((max(count, 1),), float("nan")) if dtype == "float32" else torch.zeros(
            max(count, 1), dtype=getattr(torch, dtype))
        self.memory[tensor.data_ptr()] = tensor
        return tensor

    def pinned(self, count: int) -> torch.Tensor:
        return self.empty(count)

    def noise(self, seed: int, n: int, dim: int, first_sample: int) -> torch.Tensor:
        return noise_torch(seed, n, dim, first_sample)

    def on_stream(self):
        return contextlib.nullcontext()

    def capture(self, enqueue: Callable[[], bool]) -> FakeGraph:
        self.captures += 1
        if self.refuse_capture:
            raise CaptureRefused("operation not permitted when stream is capturing")
        self.recording = []
        try:
            recorded = enqueue()
        finally:
            thunks, self.recording = self.recording, None
        if not recorded:
            raise CaptureRefused("TensorRT's enqueue failed during stream capture")
        return FakeGraph(thunks)

    def replay(self, graph: FakeGraph) -> None:
        self.replays += 1
        for thunk in graph.thunks:
            thunk()

    def synchronize(self) -> None:
        pass

    def event(self) -> float:
        return time.perf_counter()

    @staticmethod
    def seconds_between(start: float, end: float) -> float:
        return end - start


# ------------------------------------------------------------------------- TensorRT

# A compute gives ``sr``, or ``(sr, non_finite)`` where the network counts its own NaN/Inf.
COMPUTE: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray, int], Any]] = {}


def toy_model(lr: np.ndarray, noise: np.ndarray, temperature: np.ndarray, hr_size: int) -> np.ndarray:
    """A stand-in network: every output value depends on its image, its sample's noise and
    its temperature, so any mix-up of buffers, shapes or noise shows."""
    batch, n = temperature.shape
    pixels = noise[:, :, :3 * hr_size**2].reshape(batch, n, 3, hr_size, hr_size)
    image = lr.reshape(batch, -1).mean(axis=1)[:, None, None, None, None] / 255.0
    return 1.0 / (1.0 + np.exp(-(pixels + image + temperature[:, :, None, None, None])))


def nan_hiding_model(lr: np.ndarray, noise: np.ndarray, temperature: np.ndarray, hr_size: int) -> tuple:
    """``toy_model`` made NaN where the temperature is 1 or more, then clamped to numbers as some
    engines clamp NaN, with the NaN counted before the clamp (the graph's ``non_finite``)."""
    pre = toy_model(lr, noise, temperature, hr_size) * np.where(temperature >= 1, np.nan, 1.0)[:, :, None, None, None]
    counts = (~np.isfinite(pre)).reshape(*temperature.shape, -1).sum(axis=2).astype(np.float32)
    return np.nan_to_num(pre, nan=0.0), counts


COMPUTE["toy"] = toy_model
COMPUTE["nan-hiding"] = nan_hiding_model


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    BF16 = 7


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


def engine_spec(lr_size: int | None = 2, hr_size: int = 4, noise_dim: int = 64, batch: tuple = (1, 1, 2),
                n: tuple = (1, 4, 4), compute: str = "toy", counts: bool = True) -> dict[str, Any]:
    """A plan's description: the contract's I/O for these sizes (no lr without ``lr_size``: a
    prior-only graph; no non_finite without ``counts``: a cvdvae 0.1 graph) and a profile over B and n."""
    io = {"noise": ["INPUT", "FLOAT", [-1, -1, noise_dim]], "temperature": ["INPUT", "FLOAT", [-1, -1]],
          "sr": ["OUTPUT", "FLOAT", [-1, -1, 3, hr_size, hr_size]]}
    if lr_size is not None:
        io["lr"] = ["INPUT", "FLOAT", [-1, 3, lr_size, lr_size]]
    if counts:
        io["non_finite"] = ["OUTPUT", "FLOAT", [-1, -1]]
    return {"compute": compute, "hr_size": hr_size, "profile": {"batch": list(batch), "n": list(n)}, "io": io}


class FakeEngine:
    device_memory_size_v2 = 4096

    def __init__(self, trt: "FakeTensorRT", spec: dict[str, Any]):
        self.trt, self.spec = trt, spec
        self.names = list(spec["io"])
        self.contexts: list[FakeContext] = []

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode[self.spec["io"][name][0]]

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[self.spec["io"][name][1]]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.spec["io"][name][2])

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
        assert name == "noise" and profile == 0
        dim = self.spec["io"]["noise"][2][2]
        return tuple((b, n, dim) for b, n in zip(self.spec["profile"]["batch"], self.spec["profile"]["n"]))

    def create_execution_context(self, strategy: int) -> "FakeContext":
        assert strategy == self.trt.ExecutionContextAllocationStrategy.USER_MANAGED
        context = FakeContext(self)
        self.contexts.append(context)
        return context


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine, self.trt = engine, engine.trt
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.device_memory: int | None = None
        self.captured = False
        self.shape_calls: list[tuple[str, tuple[int, ...]]] = []

    def set_device_memory(self, address: int, size: int) -> None:
        assert size >= self.engine.device_memory_size_v2
        self.device_memory = address

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        batch, n = self.engine.spec["profile"]["batch"], self.engine.spec["profile"]["n"]
        self.shape_calls.append((name, tuple(shape)))
        if self.captured and self.shapes.get(name) != tuple(shape):
            self.trt.violations.append(f"{name} reshaped to {shape} after a graph was captured on its context")
        inside = batch[0] <= shape[0] <= batch[2] and (name == "lr" or n[0] <= shape[1] <= n[2])
        if not inside:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        assert name == "sr"
        batch, n = self.shapes["noise"][:2]
        hr = self.engine.spec["hr_size"]
        return batch, n, 3, hr, hr

    def execute_async_v3(self, stream: int) -> bool:
        assert stream == self.trt.cuda.stream_handle and self.device_memory is not None
        if self.trt.fail_enqueue(self):
            return False
        shapes, addresses = dict(self.shapes), dict(self.addresses)
        if self.trt.cuda.recording is not None:
            self.captured = True
            self.trt.cuda.recording.append(lambda: self._run(shapes, addresses))
        else:
            self._run(shapes, addresses)
        return True

    def _run(self, shapes: dict, addresses: dict) -> None:
        self.trt.executions.append((shapes["noise"][0], shapes["noise"][1]))

        def tensor(name: str, shape: tuple[int, ...]) -> torch.Tensor:
            return self.trt.cuda.memory[addresses[name]][:int(np.prod(shape))].view(*shape)

        noise, t = (tensor(k, shapes[k]).numpy() for k in ("noise", "temperature"))
        lr = tensor("lr", shapes["lr"]).numpy() if "lr" in shapes else np.zeros((noise.shape[0], 3, 1, 1))
        out = COMPUTE[self.engine.spec["compute"]](lr, noise, t, self.engine.spec["hr_size"])
        sr, counts = out if isinstance(out, tuple) else (out, (~np.isfinite(out)).reshape(*t.shape, -1).sum(axis=2))
        tensor("sr", sr.shape).copy_(torch.from_numpy(np.ascontiguousarray(sr, dtype=np.float32)))
        if "non_finite" in self.engine.spec["io"]:
            tensor("non_finite", t.shape).copy_(torch.from_numpy(np.ascontiguousarray(counts, dtype=np.float32)))


@dataclass
class FakeTensorRT:
    """Stands in for the ``tensorrt`` module."""

    cuda: FakeCuda
    __version__: str = "10.13.0.35"
    fail_enqueue: Callable[[FakeContext], bool] = lambda context: False
    violations: list[str] = field(default_factory=list)
    executions: list[tuple[int, int]] = field(default_factory=list)
    DataType = DataType
    TensorIOMode = TensorIOMode

    class Logger:
        WARNING = 2

        def __init__(self, level: int):
            self.level = level

    class ExecutionContextAllocationStrategy:
        STATIC, ON_PROFILE_CHANGE, USER_MANAGED = 0, 1, 2

    def Runtime(self, logger: Any) -> "FakeTensorRT":  # noqa: N802 - TensorRT's name
        return self

    def deserialize_cuda_engine(self, plan: bytes) -> FakeEngine | None:
        try:
            return FakeEngine(self, json.loads(plan))
        except ValueError:
            return None


# --------------------------------------------------------------------------- folders


def write_plan(folder: Path, spec: dict[str, Any], meta: dict[str, Any], trt: FakeTensorRT,
               name: str = "engine.plan") -> ModelFiles:
    """A plan file and the ModelFiles a runtime would see for it."""
    folder.mkdir(parents=True, exist_ok=True)
    plan = json.dumps(spec).encode()
    (folder / name).write_bytes(plan)
    engine = {"tensorrt_version": trt.__version__, **trt.cuda.info(), "plan_sha256": hashlib.sha256(plan).hexdigest()}
    return ModelFiles(folder, {**meta, "engine": engine}, None, folder / name, "plan")


def toy_meta(lr_size: int | None = 2, hr_size: int = 4, noise_dim: int = 64, counts: bool = True) -> dict[str, Any]:
    outputs = {"sr": ["B", "n", 3, hr_size, hr_size], **({"non_finite": ["B", "n"]} if counts else {})}
    return {"format": 2 if counts else 1, "lr_size": lr_size, "hr_size": hr_size,
            "scale": hr_size // lr_size if lr_size else None, "noise_dim": noise_dim, "precision": "fp32",
            "config": {"width": 4}, "conditional": lr_size is not None, "outputs": outputs}
