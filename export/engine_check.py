"""An engine against the export's FP32 reference (``export.reference``), right after it is built.

The engine runs through the runtime's own backend (what users run: CUDA graphs, padding,
on-device noise) on every reference case, in calls its profile allows. Per case: PSNR
against the reference, the max abs error away from mixture flips, the flipped pixels and
the NaN/Inf count. A pixel whose error exceeds the tolerance counts as a mixture flip only
where the reference's choice was a near tie (margin below ``FLIP_MARGIN``); anywhere else
it is an error.

Bounds, by what the engine computes in:
- fp32 with TF32 off: max abs error <= 1e-3 and at most 0.1% flipped pixels;
- fp32 with TF32, fp16: PSNR >= 35 dB (TF32 and float16 keep the same 10-bit mantissa);
- bf16: PSNR >= 19 dB;
(``export.precision.MIN_PSNR_DB``: why these figures, from the precision study)
and never a NaN or an Inf.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from runtime.backends.interface import Sampled
from runtime.sampling import sample_images

from .precision import MIN_PSNR_DB, compare
from .reference import Case

FP32_TOLERANCE = 1e-3
FLIP_MARGIN = 1e-2
LOGISTIC_TAIL = 3.5  # |g| beyond which float32 keeps fewer than ~12 bits of 1 - Phi(g)
REDUCED_TOLERANCE = 5e-2  # per pixel, only to count flips in reduced-precision engines


@dataclass
class CaseResult:
    batch: int
    n: int
    psnr_db: float
    max_abs_error: float   # away from flipped pixels
    flipped_pixels: int
    pixels: int
    non_finite: int
    passed: bool


@dataclass
class EngineCheck:
    reference: str          # what computed the reference: onnxruntime-fp32 or pytorch-fp32
    arithmetic: str         # fp32, tf32, fp16 or bf16
    bound: str
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.cases) and all(c.passed for c in self.cases)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "engine": "tensorrt (the runtime's backend)", "passed": self.passed}

    def summary(self) -> str:
        parts = [f"B={c.batch} n={c.n}: PSNR {c.psnr_db} dB, max abs {c.max_abs_error:.2e}, "
                 f"{c.flipped_pixels} flipped of {c.pixels}, {c.non_finite} NaN/Inf" for c in self.cases]
        return (f"engine check {'passed' if self.passed else 'FAILED'} ({self.arithmetic} vs {self.reference}; "
                f"{self.bound}): " + "; ".join(parts))


def arithmetic_of(precision: str, tf32: bool) -> str:
    return "tf32" if precision == "fp32" and tf32 else precision


def bound_text(arithmetic: str) -> str:
    if arithmetic == "fp32":
        return f"max abs <= {FP32_TOLERANCE:g} away from flips, flips <= 0.1%, no NaN/Inf"
    return f"PSNR >= {MIN_PSNR_DB[_psnr_key(arithmetic)]:g} dB, no NaN/Inf"


def _psnr_key(arithmetic: str) -> str:
    return "fp16" if arithmetic == "tf32" else arithmetic


def away_from_flips(sr: np.ndarray, reference: np.ndarray, margin: np.ndarray, tolerance: float,
                    tails: np.ndarray | None = None) -> tuple[float, int, int]:
    """(max abs error over the other pixels, mixture flips, tail pixels). ``sr`` and ``reference``
    [B, n, 3, H, W], ``margin`` and ``tails`` [B, n, H, W]; NaN counts as an infinite error.

    A pixel off by more than ``tolerance`` is a flip where the reference's mixture choice was a
    near tie, and a tail pixel where ``tails`` marks its logistic draw as float32-ill-conditioned."""
    diff = np.abs(sr.astype(np.float64) - reference)
    error = np.where(np.isnan(diff), np.inf, diff).max(axis=2)  # per pixel
    beyond = (error > tolerance) & np.isfinite(error)
    flipped = beyond & (margin < FLIP_MARGIN)
    tail = beyond & ~flipped & (tails if tails is not None else False)
    kept = np.where(flipped | tail, 0.0, error)
    return (float(kept.max()) if kept.size else 0.0), int(flipped.sum()), int(tail.sum())


def logistic_tails(pixel_noise: np.ndarray, num_mixtures: int, bound: float = LOGISTIC_TAIL) -> np.ndarray:
    """[N, H, W]: pixels whose logistic draw ``u = Phi(g)`` has |g| > ``bound``. There ``log(1 - u)``
    (or ``log u``) is ill-conditioned in float32: at g = 4, 1 - u = 3e-5 keeps ~10 bits, so two
    correct float32 engines differ by ~1e-4 in that pixel (and, through the colour coupling, the
    channels after it). ``pixel_noise`` [N, M + 3, H, W]."""
    return (np.abs(pixel_noise[:, num_mixtures:]) > bound).any(axis=1)


def judge(result: Sampled, case: Case, arithmetic: str) -> CaseResult:
    """One engine output against its reference case; the engine's own NaN/Inf counts fail it too."""
    batch, n = case.shape
    sr = result.samples
    agreement = compare(sr, case.sr)
    tolerance = FP32_TOLERANCE if arithmetic == "fp32" else REDUCED_TOLERANCE
    max_abs, flips, _ = away_from_flips(sr, case.sr, case.margin, tolerance)
    pixels = batch * n * sr.shape[-1] * sr.shape[-2]
    if arithmetic == "fp32":
        passed = max_abs <= tolerance and flips <= max(1, pixels // 1000)
    else:
        passed = agreement.psnr_db >= MIN_PSNR_DB[_psnr_key(arithmetic)]
    non_finite = max(agreement.non_finite, int(result.non_finite.sum()))
    passed = passed and non_finite == 0
    return CaseResult(batch, n, agreement.psnr_db, max_abs, flips, pixels, non_finite, bool(passed))


def run_case(backend: Any, case: Case) -> Sampled:
    """The engine's samples for a case, in calls within its profile (as cvdvae run makes them).
    A prior-only case's rows share their noise: one B = 1 draw stands for each of them."""
    result = sample_images(backend, case.lr, case.seed, case.temperature)
    if case.lr is not None:
        return result
    return Sampled(np.broadcast_to(result.samples, case.sr.shape), np.broadcast_to(result.non_finite, case.shape))


def check_engine(backend: Any, cases: list[Case], reference: str, precision: str, tf32: bool) -> EngineCheck:
    arithmetic = arithmetic_of(precision, tf32)
    check = EngineCheck(reference, arithmetic, bound_text(arithmetic))
    for case in cases:
        check.cases.append(judge(run_case(backend, case), case, arithmetic))
    return check
