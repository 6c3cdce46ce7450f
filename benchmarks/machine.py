"""What machine a benchmark ran on, and its practical compute ceiling (the best large matmul)."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np


def today() -> str:
    """The date a result was measured (UTC, ISO 8601): every results file carries one, and the docs name it."""
    return time.strftime("%Y-%m-%d", time.gmtime())


def environment(threads: int) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": threads, "python": platform.python_version(),
        "platform": platform.platform(), "torch": torch.__version__, "numpy": np.__version__,
    }
    for module in ("onnxruntime", "openvino", "tensorrt", "polygraphy", "cvdvae"):
        try:
            env[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - absent or broken: recorded as such
            env[module] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   compute_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda, driver=driver())
    return env


VECTOR_PREFIXES = ("sse", "ssse", "avx", "amx", "fma", "bmi", "sha", "aes", "f16c")


def vector_flags() -> list[str]:
    """The CPU's vector-instruction flags: what the engines' kernels, codecs and resamplers can use."""
    from runtime.backends.cpu_features import cpu_flags

    return sorted(f for f in cpu_flags() or () if f.startswith(VECTOR_PREFIXES))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return None


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def matmul_peak(device: str, dtype_name: str, threads: int) -> float:
    """Best GFLOP/s of a large square matmul (TF32 off for float32, as the FP32 rows run)."""
    import torch

    from cvdvae.tf32 import set_tf32

    torch.set_num_threads(threads)
    set_tf32(False)
    dtype = getattr(torch, dtype_name)
    size = 8192 if device == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = math.inf
    for _ in range(5 if device == "cpu" else 20):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9
