"""One small interface over the engines that run a graph, and the choice between them.

A backend takes host LR images and a slice of sample indices and returns samples; it makes
the contract's seeded noise itself (on the device where it has one), so that the same
seed gives the same faces on every backend.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from cvdvae.errors import CVDVAEError

from .gpu import tensorrt_unavailable_reason
from .model_files import ModelFiles
from .timings import Timings

CHOICES = ("auto", "tensorrt", "openvino", "onnxruntime", "onnxruntime-cuda", "onnxruntime-cpu")
ORT_DEVICES = {"onnxruntime": "auto", "onnxruntime-cuda": "cuda", "onnxruntime-cpu": "cpu"}


class Backend(Protocol):
    name: str
    precision: str
    max_batch: int      # images per call
    max_n: int          # samples per image per call
    timings: Timings

    def sample(self, lr: np.ndarray | None, seed: int, first_sample: int, temperature: np.ndarray) -> np.ndarray:
        """``lr`` [B, 3, h, w] 0..255 (None for a prior-only model: B = 1), samples
        ``first_sample ..`` with ``temperature`` [n] -> float32 [B, n, 3, H, W] in [0, 1]
        (NaN or Inf only when the engine is broken)."""
        ...


def open_backend(files: ModelFiles, choice: str = "auto", *, max_batch: int | None = None,
                 max_n: int | None = None, threads: int = 0, tf32: bool = False) -> tuple[Backend, str | None]:
    """The backend to use and, when ``auto`` had to fall back, why.

    ``auto`` takes TensorRT when the folder has an engine and TensorRT runs here; else ONNX
    Runtime's CUDA provider where it is installed; else, on the CPU, OpenVINO where it is
    installed (1.7x ONNX Runtime on this project's CPU benchmark), else ONNX Runtime. Naming
    an ``engine.plan`` asks for TensorRT.
    """
    if choice not in CHOICES:
        raise CVDVAEError(f"unknown backend {choice!r}: choose one of {', '.join(CHOICES)}")
    if choice == "auto" and files.requested == "plan":
        choice = "tensorrt"
    note = None
    if choice in ("auto", "tensorrt"):
        reason = tensorrt_unavailable_reason()
        if files.plan is None:
            reason = f"no engine.plan in {files.folder} (build one: cvdvae export --engine-only {files.folder})"
        if reason is None:
            from .tensorrt_backend import TensorRTBackend

            return TensorRTBackend(files, max_batch=max_batch, max_n=max_n), None
        if choice == "tensorrt":
            raise CVDVAEError(f"cannot run TensorRT here: {reason}; use --backend onnxruntime")
        note = f"no TensorRT: {reason}" if files.plan is not None else None
        choice = cpu_choice()
    if choice == "openvino":
        from .openvino_backend import OpenVINOBackend

        return OpenVINOBackend(files, max_batch=max_batch, max_n=max_n, threads=threads), note
    from .onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(files, max_batch=max_batch, max_n=max_n, threads=threads,
                                 device=ORT_DEVICES[choice], tf32=tf32)
    notes = [text for text in (note, backend.note) if text]
    return backend, "; ".join(notes) or None


def cpu_choice() -> str:
    """Without TensorRT: ONNX Runtime when it has CUDA, else OpenVINO when installed, else ONNX Runtime."""
    try:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return "onnxruntime"
    except ImportError:
        pass
    try:
        import openvino  # noqa: F401

        return "openvino"
    except ImportError:
        return "onnxruntime"
