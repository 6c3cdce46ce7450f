"""The optional dependencies each job needs (pyproject.toml's extras), and one error when they are missing.

The base install samples an exported graph's outputs into files: numpy, Pillow, typer, rich and
PyYAML. Everything else comes with the extra of the job that needs it:

- ``cpu``: an engine for CPUs, OpenVINO and ONNX Runtime (either one runs a graph);
- ``gpu``: TensorRT, ONNX Runtime's CUDA build, and a CUDA PyTorch for the engine's device memory;
- ``export``: PyTorch and the ONNX tool chain: export, convert, train, eval, weight files as models;
- ``serve``: Ray Serve and FastAPI (``cvdvae serve``);
- ``cluster``: Ray Data (``cvdvae run --ray``).

A job asks ``require(extra, job)`` before any work; a missing package becomes one line naming
the extra to install (``MissingExtra``). Packages are looked up, not imported, so asking costs
nothing.
"""

from __future__ import annotations

import importlib.util

from .errors import MissingExtra

# What each extra installs that its jobs import (top-level modules: looking up ``ray.serve`` would
# import Ray).
PACKAGES = {
    "cpu": ("openvino", "onnxruntime"),
    "gpu": ("tensorrt", "onnxruntime", "torch"),
    "export": ("torch", "onnx", "onnxscript", "onnxslim", "polygraphy", "safetensors"),
    "serve": ("ray", "fastapi", "uvicorn", "python_multipart", "prometheus_client", "swagger_ui_bundle"),
    "cluster": ("ray", "pandas", "pyarrow", "tqdm"),
}
ANY_OF = {"cpu"}  # extras where one of the packages is enough (either engine runs a graph)


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(extra: str) -> list[str]:
    """The packages of ``extra`` that are not installed (none missing for an any-of extra with one present)."""
    absent = [module for module in PACKAGES[extra] if not installed(module)]
    if extra in ANY_OF and len(absent) < len(PACKAGES[extra]):
        return []
    return absent


def require(extra: str, job: str) -> None:
    """Raise ``MissingExtra`` when ``extra`` is not installed: ``job`` (say "cvdvae export") names what needs it."""
    if missing(extra):
        raise MissingExtra(job, extra)
