"""One small interface over the engines that run a graph.

A backend takes host LR images and a slice of sample indices and returns samples; it makes
the contract's seeded noise itself (on the device where it has one), so that the same
seed gives the same faces on every backend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from cvdvae.errors import CVDVAEError
from cvdvae.seeding import noise_numpy

from .gpu import tensorrt_unavailable_reason
from .model_files import ModelFiles, verify_onnx


@dataclass
class Timings:
    """Seconds spent, accumulated over calls (the benchmark reads these)."""

    noise: float = 0.0
    inference: float = 0.0
    calls: int = 0
    load: float = 0.0


class Backend(Protocol):
    name: str
    precision: str
    max_batch: int      # images per call
    max_n: int          # samples per image per call
    timings: Timings

    def sample(self, lr: np.ndarray, seed: int, first_sample: int, temperature: np.ndarray) -> np.ndarray:
        """``lr`` [B, 3, h, w] 0..255, samples ``first_sample ..`` with ``temperature`` [n] ->
        float32 [B, n, 3, H, W] in [0, 1]."""
        ...


class NoiseCache(dict):
    """Noise blocks by (seed, first sample, n): every image chunk of a run reuses them."""

    def get_or_make(self, key: tuple[int, int, int], make):
        if key not in self:
            self[key] = make()
        return self[key]


CALL_MEMORY_BUDGET = 3 * 2**30  # activation bytes one ONNX Runtime call may hold


def samples_per_call(files: ModelFiles, budget: int = CALL_MEMORY_BUDGET) -> int:
    """How many samples one call may hold: a sample keeps about eight width x H x W float32
    tensors alive at its largest resolution (1.1 GB for FFHQ-256, measured 1.1 GB)."""
    width = int(files.meta.get("config", {}).get("width", 512))
    per_sample = 8 * 4 * width * files.hr_size**2
    return max(1, budget // per_sample)


@dataclass
class OnnxRuntimeBackend:
    """``model.onnx`` through ONNX Runtime (CUDA provider when present, else CPU).

    Without explicit limits a call holds at most ``samples_per_call`` samples (B <= 4,
    n <= 8): throughput per sample does not grow with the call size on a CPU, memory does.
    """

    files: ModelFiles
    max_batch: int | None = None
    max_n: int | None = None
    threads: int = 0
    name: str = "onnxruntime"
    timings: Timings = field(default_factory=Timings)
    _noise: NoiseCache = field(default_factory=NoiseCache)

    def __post_init__(self) -> None:
        import onnxruntime as ort

        start = time.perf_counter()
        path = verify_onnx(self.files)
        options = ort.SessionOptions()
        # Without the arena, memory goes back after each call instead of being kept at the
        # high-water mark of every call shape seen (FFHQ-256 x4, --n 8: peak RSS 6.6 -> 3.9 GB).
        options.enable_cpu_mem_arena = False
        if self.threads:
            options.intra_op_num_threads = self.threads
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
            raise CVDVAEError(f"ONNX Runtime cannot load {path}: {str(err).splitlines()[0]}") from None
        self.provider = self.session.get_providers()[0]
        self.precision = self.files.precision
        budget = samples_per_call(self.files)
        self.max_n = self.max_n or min(8, budget)
        self.max_batch = self.max_batch or max(1, min(4, budget // self.max_n))
        self.timings.load = time.perf_counter() - start

    def sample(self, lr: np.ndarray, seed: int, first_sample: int, temperature: np.ndarray) -> np.ndarray:
        batch, n = lr.shape[0], temperature.shape[0]
        start = time.perf_counter()
        noise = self._noise.get_or_make((seed, first_sample, n),
                                lambda: noise_numpy(seed, n, self.files.noise_dim, first_sample))
        feeds = {
            "lr": np.ascontiguousarray(lr, dtype=np.float32),
            "noise": np.ascontiguousarray(np.broadcast_to(noise, (batch, n, noise.shape[1]))),
            "temperature": np.ascontiguousarray(np.broadcast_to(temperature.astype(np.float32), (batch, n))),
        }
        middle = time.perf_counter()
        out = self.session.run(["sr"], feeds)[0]
        self.timings.noise += middle - start
        self.timings.inference += time.perf_counter() - middle
        self.timings.calls += 1
        return out


def open_backend(files: ModelFiles, choice: str = "auto", *, max_batch: int | None = None,
                 max_n: int | None = None) -> tuple[Backend, str | None]:
    """The backend to use and, when ``auto`` fell back from TensorRT, why.

    ``auto`` takes TensorRT when the folder has an engine and TensorRT runs here, and ONNX
    Runtime otherwise; naming a ``model.onnx`` picks ONNX Runtime, an ``engine.plan`` TensorRT.
    """
    if choice not in ("auto", "tensorrt", "onnxruntime"):
        raise CVDVAEError(f"unknown backend {choice!r}: choose auto, tensorrt or onnxruntime")
    if choice == "auto":
        choice = {"plan": "tensorrt", "onnx": "onnxruntime"}.get(files.requested, "auto")
    note = None
    if choice in ("auto", "tensorrt"):
        reason = tensorrt_unavailable_reason()
        if files.plan is None:
            reason = f"no engine.plan in {files.folder} (build one: cvdvae-export --engine-only {files.folder})"
        if reason is None:
            from .tensorrt_backend import TensorRTBackend

            return TensorRTBackend(files, max_batch=max_batch, max_n=max_n), None
        if choice == "tensorrt":
            raise CVDVAEError(f"cannot run TensorRT here: {reason}; use --backend onnxruntime")
        note = f"using ONNX Runtime: {reason}" if files.plan is not None else None
    limits = {k: v for k, v in (("max_batch", max_batch), ("max_n", max_n)) if v}
    return OnnxRuntimeBackend(files, **limits), note
