"""Is there TensorRT and a CUDA GPU here (shared by engine building and running)."""

from __future__ import annotations


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
