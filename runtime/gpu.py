"""Is there TensorRT and a CUDA GPU here, and which GPU (shared by engine building and running)."""

from __future__ import annotations

from typing import Any


def tensorrt_unavailable_reason() -> str | None:
    """Why no engine can be built or run here, or None when TensorRT and a CUDA GPU are present."""
    try:
        import tensorrt  # noqa: F401
    except Exception as err:  # noqa: BLE001 - a broken install raises more than ImportError
        detail = str(err).splitlines()[0] if str(err) else ""
        return f"TensorRT is not installed ({type(err).__name__}: {detail})"
    try:
        import torch
    except ImportError:
        return "the TensorRT path needs a CUDA build of PyTorch for its buffers and noise"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


def gpu_info() -> dict[str, Any]:
    import torch

    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}
