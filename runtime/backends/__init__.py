"""One small interface over the engines that run a model, and the choice between them.

A backend (``interface.Backend``) takes host LR images, a seed per row and a slice of sample
indices and returns samples; it makes the contract's seeded noise itself (on the device where
it has one), so that the same seed gives the same faces on every backend. ``runtime.sampling``
packs requests into calls within ``max_batch`` x ``max_n``; the pipeline and the service go
through it.

Engines: ``tensorrt`` (``engine.plan``), ``openvino`` and ``onnxruntime`` (``model.onnx``),
``torch`` (weight files, through PyTorch on the CPU or CUDA).
"""

from __future__ import annotations

from cvdvae.errors import CVDVAEError

from ..model_files import ModelFiles
from .gpu import tensorrt_unavailable_reason
from .interface import Backend

GRAPH_CHOICES = ("auto", "tensorrt", "openvino", "onnxruntime", "onnxruntime-cuda", "onnxruntime-cpu")
CHOICES = (*GRAPH_CHOICES, "torch")
ORT_DEVICES = {"onnxruntime": "auto", "onnxruntime-cuda": "cuda", "onnxruntime-cpu": "cpu"}
# What the engine computes in: ``auto`` the export's own precision; ``bf16`` OpenVINO's bf16 on a CPU
# that has it, with the float32 islands the precision study chose (runtime.backends.openvino_precision).
PRECISION_CHOICES = ("auto", "fp32", "bf16")


def open_backend(files: ModelFiles, choice: str = "auto", *, max_batch: int | None = None,
                 max_n: int | None = None, threads: int = 0, tf32: bool = False,
                 precision: str = "auto") -> Backend:
    """The backend that runs this export folder; ``note`` says why, when ``auto`` had to fall back.

    ``auto`` takes TensorRT when the folder has an engine and TensorRT runs here; else ONNX
    Runtime's CUDA provider where it is installed; else, on the CPU, OpenVINO where it is
    installed (the fastest CPU engine in this project's benchmark, docs/benchmarks/index.md), else ONNX Runtime.
    Naming an ``engine.plan`` asks for TensorRT. ``precision="bf16"`` runs on OpenVINO only.
    """
    if choice not in GRAPH_CHOICES:
        raise CVDVAEError(f"unknown backend {choice!r} for an exported graph: choose one of "
                          f"{', '.join(GRAPH_CHOICES)}")
    choice = _precision_backend(files, choice, precision)
    if choice == "auto" and files.requested == "plan":
        choice = "tensorrt"
    note = None
    if choice in ("auto", "tensorrt"):
        reason = tensorrt_unavailable_reason()
        if files.plan is None:
            reason = f"no engine.plan in {files.folder} (build one: cvdvae export --engine-only {files.folder})"
        if reason is not None and choice == "tensorrt":
            raise CVDVAEError(f"cannot run TensorRT here: {reason}; choose {{backend}}", backend="onnxruntime")
        if reason is None:
            choice = "tensorrt"
        else:
            note = f"no TensorRT: {reason}" if files.plan is not None else None
            choice = cpu_choice()
    backend: Backend
    if choice == "tensorrt":
        from .tensorrt import TensorRTBackend

        backend = TensorRTBackend(files, max_batch=max_batch, max_n=max_n)
    elif choice == "openvino":
        from .openvino import OpenVINOBackend

        backend = OpenVINOBackend(files, max_batch=max_batch, max_n=max_n, threads=threads,
                                  inference_precision="bf16" if precision == "bf16" else "fp32")
    else:
        from .onnxruntime import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(files, max_batch=max_batch, max_n=max_n, threads=threads,
                                     device=ORT_DEVICES[choice], tf32=tf32)
    backend.note = "; ".join(text for text in (note, backend.note, unchecked_note(files)) if text) or None
    return backend


def _precision_backend(files: ModelFiles, choice: str, precision: str) -> str:
    """The backend choice once ``precision`` is taken into account (bf16: OpenVINO on an FP32 export)."""
    if precision not in PRECISION_CHOICES:
        raise CVDVAEError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISION_CHOICES)}")
    if precision == "auto" or (precision == "fp32" and files.precision == "fp32"):
        return choice
    if precision == "fp32":
        raise CVDVAEError(f"{files.folder} computes in {files.precision} (its export's precision): export it in "
                          "fp32 to run FP32")
    if files.precision != "fp32":
        raise CVDVAEError(f"bf16 on the CPU starts from an FP32 export; {files.folder} is {files.precision}")
    if choice not in ("auto", "openvino"):
        raise CVDVAEError("bf16 on the CPU runs on OpenVINO only: use {backend}", backend="openvino")
    return "openvino"


def unchecked_note(files: ModelFiles) -> str | None:
    """What a graph without its own NaN/Inf count (exported by cvdvae 0.1) cannot show."""
    if files.reports_non_finite:
        return None
    return (f"{files.folder} was exported by cvdvae {files.meta.get('cvdvae_version', '0.1')} and does not count "
            "NaN/Inf itself: a numerically broken engine that turns NaN into numbers is not caught; re-export it")


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
