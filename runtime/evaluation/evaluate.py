"""A data set through a ``Pipeline``: every input sampled as ``cvdvae run`` would, scored, averaged."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvdvae.errors import CVDVAEError
from cvdvae.progress import ProgressBar
from cvdvae.train.data import HRSource, PairDataset, split_indices

from ..pipeline import LRInput, Pipeline
from .scores import Scores, score, spread_scores

BRISQUE_NOTE = "LIVE's model (cvdvae fetch brisque), 8-bit RGB samples through MATLAB rgb2gray; lower is better"


@dataclass(frozen=True)
class EvalSettings:
    data: Path                    # a folder of HR images, or the VD-VAE ffhq-256.npy array
    temperatures: np.ndarray      # [n] float32, one per sample
    split: str = "val"            # val: the official held-out images; all: every image in order
    count: int = 100              # inputs evaluated
    seed: int = 0
    lpips: Any = None             # a cvdvae.metrics.LPIPS, or None for no LPIPS metrics
    tf32: bool = False            # recorded in the protocol
    brisque: Any = None           # LIVE's BRISQUE model (cvdvae.metrics.brisque.SVR), or None: not scored
    levels: tuple[int, ...] = ()  # where the diversity lives: per level, samples that vary from it only

    @property
    def n(self) -> int:
        return len(self.temperatures)


def evaluate(pipe: Pipeline, settings: EvalSettings, progress: bool = False) -> dict[str, Any]:
    """The metrics' means over the inputs, the protocol, and ``non_finite_samples``: samples with
    NaN/Inf are counted and their inputs left out of the means (``cvdvae run`` would not write them)."""
    shape = pipe.shape
    if not shape.conditional:
        raise CVDVAEError("this is a prior-only model: the metrics need a super-resolution model")
    source = HRSource(settings.data, shape.hr_size)
    indices = split_indices(len(source))[1] if settings.split == "val" else np.arange(len(source))
    images = PairDataset(source, indices[:settings.count], shape.scale)
    per_input: list[Scores] = []
    per_level: dict[int, list[Scores]] = {level: [] for level in settings.levels}
    by_temperature: dict[float, list[float]] = {}
    non_finite, start = 0, time.perf_counter()
    batches = range(0, len(images), pipe.backend.max_batch)
    with ProgressBar(len(batches), "batches", disable=not progress) as bar:
        for first in batches:
            pairs = [images[i] for i in range(first, min(first + pipe.backend.max_batch, len(images)))]
            inputs = [LRInput(lr.numpy(), None, f"input {first + i}") for i, (_, lr) in enumerate(pairs)]
            output = pipe(inputs, settings.n, settings.seed, settings.temperatures, keep_non_finite=True)
            non_finite += sum(len(broken) for broken in output.non_finite)
            per_input += score_output(output, pairs, shape.scale, settings, by_temperature)
            for level in settings.levels:  # sample 0's levels below ``level`` kept, the rest drawn afresh
                varied = pipe(inputs, settings.n, settings.seed, settings.temperatures, keep_non_finite=True,
                              like=0, vary_from=level)
                non_finite += sum(len(broken) for broken in varied.non_finite)
                per_level[level] += score_output(varied, pairs, shape.scale, settings)
            bar.update()
    results = summarise(per_input, settings, pipe, time.perf_counter() - start)
    if settings.brisque is not None:
        results["brisque_by_temperature"] = {f"{t:g}": float(np.mean(v)) for t, v in sorted(by_temperature.items())}
    if settings.levels:
        results["levels"] = {str(level): means(scores) for level, scores in per_level.items()}
    results["non_finite_samples"] = non_finite
    return results


def score_output(output: Any, pairs: list, scale: int, settings: EvalSettings,
                 by_temperature: dict[float, list[float]] | None = None) -> list[Scores]:
    """Each finite input's scores (``Scores``), its BRISQUE per sample kept by temperature."""
    from cvdvae.metrics.brisque import brisque

    scored = torch.from_numpy(output.samples).permute(0, 1, 4, 2, 3).double() / 255.0
    done = []
    with torch.no_grad():
        for i, (hr, lr) in enumerate(pairs):
            if output.non_finite[i]:
                continue
            scores = score(scored[i], lr, hr, scale, settings.lpips)
            summary = output.summary(i)
            scores.mean_psnr, scores.std_error_corr = spread_scores(summary, hr.permute(1, 2, 0).numpy())
            scores.mean_std = float(summary.std.mean())
            if settings.brisque is not None:
                values = [brisque(sample, settings.brisque) for sample in output.samples[i]]
                scores.brisque = float(np.mean(values))
                for t, value in zip(settings.temperatures, values if by_temperature is not None else []):
                    by_temperature.setdefault(float(t), []).append(value)
            done.append(scores)
    return done


def means(per_input: list[Scores]) -> dict[str, float | None]:
    """Each metric's mean over the inputs that have it."""
    out = {}
    for f in dataclasses.fields(Scores):
        values = [getattr(s, f.name) for s in per_input if getattr(s, f.name) is not None]
        out[f.name] = float(np.mean(values)) if values else None
    return out


def summarise(per_input: list[Scores], settings: EvalSettings, pipe: Pipeline, wall: float) -> dict[str, Any]:
    temperatures = [round(float(t), 6) for t in settings.temperatures]
    return {
        "metrics": means(per_input),
        "brisque": BRISQUE_NOTE if settings.brisque is not None else "not computed (--no-brisque)",
        "protocol": {"inputs": len(per_input), "samples_per_input": settings.n,
                     "temperature": temperatures[0] if len(set(temperatures)) == 1 else temperatures,
                     "seed": settings.seed, "split": settings.split, "data": str(settings.data),
                     "hr_size": pipe.shape.hr_size, "scale": pipe.shape.scale,
                     "degradation": "MATLAB bicubic (antialiased), uint8 after each pass",
                     "samples_scored_as": "8-bit (round half to even), RGB, no border crop",
                     "tf32": settings.tf32,
                     "lpips": "LPIPS v0.1 AlexNet" if settings.lpips is not None else None,
                     **({"levels": "per level L: sample 0's latent groups below L kept, the others drawn afresh "
                                   "(like=0, vary_from=L)"} if settings.levels else {})},
        "model_id": pipe.model_id, "backend": pipe.backend.name, "precision": pipe.backend.precision,
        "wall_s": round(wall, 2),
    }
