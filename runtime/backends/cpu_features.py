"""Whether this CPU computes in bfloat16 natively.

OpenVINO's CPU plugin runs bf16 on AVX512-BF16 (``avx512_bf16``: Cooper Lake, Sapphire Rapids,
AMD Zen 4 and later) or AMX (``amx_bf16``: Sapphire Rapids and later). Elsewhere it quietly
computes in FP32, so a user asking for bf16 would get neither its speed nor a word about it.
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

from cvdvae.errors import CVDVAEError

BF16_FLAGS = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16"}
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str] | None:
    """The first processor's feature flags (Linux), or None where the kernel does not list them."""
    value = _first_value(cpuinfo, ("flags", "Features"))
    return None if value is None else set(value.split())


def cpu_identity(cpuinfo: Path = CPUINFO) -> dict[str, str]:
    """What code compiled for this CPU depends on: its name and (a digest of) its feature flags."""
    flags = cpu_flags(cpuinfo)
    features = "unknown" if flags is None else hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()
    return {"CPU": _first_value(cpuinfo, ("model name",)) or platform.processor() or platform.machine(),
            "CPU flags": features}


def _first_value(cpuinfo: Path, keys: tuple[str, ...]) -> str | None:
    """The first processor's value of one of ``keys`` in ``/proc/cpuinfo`` (Linux), else None."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def bf16_missing(flags: set[str] | None, openvino_capabilities: list[str]) -> str | None:
    """Why bf16 cannot run natively here (one line), or None when it can. Without a flag list
    (not Linux), OpenVINO's own ``OPTIMIZATION_CAPABILITIES`` decide."""
    if flags is None:
        if "BF16" in openvino_capabilities:
            return None
        return "OpenVINO reports no native bf16 on this CPU (needs AVX512-BF16 or AMX-BF16)"
    if flags & set(BF16_FLAGS):
        return None
    return (f"this CPU lacks {' and '.join(BF16_FLAGS.values())} (no {' or '.join(BF16_FLAGS)} in its flags), "
            "which bf16 needs")


def bf16_missing_here() -> str | None:
    """``bf16_missing`` for this machine's CPU."""
    import openvino

    return bf16_missing(cpu_flags(), list(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")))


def require_bf16() -> None:
    """Raise a one-line ``CVDVAEError`` unless this CPU runs bf16 natively."""
    reason = bf16_missing_here()
    if reason is not None:
        raise CVDVAEError(f"bf16 cannot run here: {reason}; use {{precision}}", precision="fp32")
