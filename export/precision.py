"""Graph precisions: names, torch dtypes, and how far a reduced precision strays from FP32."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# The least PSNR (dB, on [0, 1]) a reduced-precision graph may have against FP32 on the same
# inputs, mixture-choice flips included. One rule: 3 dB (a factor 1.4 in RMS error) below the
# lowest figure a correct graph of that arithmetic reached, rounded down to a whole dB. The
# figures (benchmarks/bf16_study.py, results/cpu-2core-intel-xeon-bf16-study.md: ffhq256-x8 with
# seeded random weights, n = 8, OpenVINO computing in that arithmetic with this export's float32
# islands; docs/guides/export.md: the x4 export's own validation):
# - fp16: 40.4 dB (worst sample 39.2), x4 38.2 dB -> 35 dB. The same graph without its islands
#   scores 30.2 dB (its pixel head's 1 - 1e-5 rounds to 1), which the bound now fails;
# - bf16: 23.1 dB (worst sample 22.75), x4 22.8 dB -> 19 dB. Two samples of different noise
#   agree to 4.2 dB at most, which every bound fails. TF32 keeps float16's 10-bit mantissa: fp16's bound.
MIN_PSNR_DB = {"fp16": 35.0, "bf16": 19.0}

# What stays float32 in an fp16/bf16 graph, and why (written into meta.json).
FP32_ISLANDS = {
    "inputs and outputs": "the contract's I/O is float32 for every precision",
    "LR normalisation": "(pixel + shift) * scale is computed before the cast",
    "latent draws": "z = exp(log_sigma) * eps + mu: exp of a log-std overflows float16",
    "DMOL pixel head": "Phi(g) clamped to 1 - 1e-5 is 1.0 in float16, so log(1 - u) would be -inf; "
                       "exp of log-scales; the colour coupling and clamps",
    "consistency projection": "the bicubic pseudo-inverse matrices need float32 accuracy",
}


@dataclass(frozen=True)
class Agreement:
    """One output compared with a float32 reference on the same inputs."""

    psnr_db: float
    max_abs_error: float
    mean_abs_error: float
    non_finite: int
    values: int

    def to_dict(self) -> dict:
        return asdict(self)


def compare(output: np.ndarray, reference: np.ndarray) -> Agreement:
    """PSNR over the [0, 1] range, errors, and a NaN/Inf count of ``output``."""
    output = np.asarray(output, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    finite = np.isfinite(output)
    diff = np.abs(np.where(finite, output, 0.0) - reference)
    mse = float(np.mean(diff ** 2))
    psnr = math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)
    return Agreement(round(psnr, 2) if math.isfinite(psnr) else psnr, float(diff.max()), float(diff.mean()),
                     int((~finite).sum()), int(output.size))
