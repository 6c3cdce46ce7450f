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

BRISQUE_NOTE = "not computed: no BRISQUE model can be obtained and checked offline here (see README)"


@dataclass(frozen=True)
class EvalSettings:
    data: Path                    # a folder of HR images, or the VD-VAE ffhq-256.npy array
    temperatures: np.ndarray      # [n] float32, one per sample
    split: str = "val"            # val: the official held-out images; all: every image in order
    count: int = 100              # inputs evaluated
    seed: int = 0
    lpips: Any = None             # a cvdvae.metrics.LPIPS, or None for no LPIPS metrics
    tf32: bool = False            # recorded in the protocol

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
    non_finite, start = 0, time.perf_counter()
    batches = range(0, len(images), pipe.backend.max_batch)
    with ProgressBar(len(batches), "batches", disable=not progress) as bar:
        for first in batches:
            pairs = [images[i] for i in range(first, min(first + pipe.backend.max_batch, len(images)))]
            inputs = [LRInput(lr.numpy(), None, f"input {first + i}") for i, (_, lr) in enumerate(pairs)]
            output = pipe(inputs, settings.n, settings.seed, settings.temperatures, keep_non_finite=True)
            non_finite += sum(len(broken) for broken in output.non_finite)
            scored = torch.from_numpy(output.samples).permute(0, 1, 4, 2, 3).double() / 255.0
            with torch.no_grad():
                for i, (hr, lr) in enumerate(pairs):
                    if not output.non_finite[i]:
                        scores = score(scored[i], lr, hr, shape.scale, settings.lpips)
                        truth = hr.permute(1, 2, 0).numpy()
                        scores.mean_psnr, scores.std_error_corr = spread_scores(output.summary(i), truth)
                        per_input.append(scores)
            bar.update()
    results = summarise(per_input, settings, pipe, time.perf_counter() - start)
    results["non_finite_samples"] = non_finite
    return results


def summarise(per_input: list[Scores], settings: EvalSettings, pipe: Pipeline, wall: float) -> dict[str, Any]:
    means = {}
    for f in dataclasses.fields(Scores):
        values = [getattr(s, f.name) for s in per_input if getattr(s, f.name) is not None]
        means[f.name] = float(np.mean(values)) if values else None
    temperatures = [round(float(t), 6) for t in settings.temperatures]
    return {
        "metrics": means,
        "brisque": BRISQUE_NOTE,
        "protocol": {"inputs": len(per_input), "samples_per_input": settings.n,
                     "temperature": temperatures[0] if len(set(temperatures)) == 1 else temperatures,
                     "seed": settings.seed, "split": settings.split, "data": str(settings.data),
                     "hr_size": pipe.shape.hr_size, "scale": pipe.shape.scale,
                     "degradation": "MATLAB bicubic (antialiased), uint8 after each pass",
                     "samples_scored_as": "8-bit (round half to even), RGB, no border crop",
                     "tf32": settings.tf32,
                     "lpips": "LPIPS v0.1 AlexNet" if settings.lpips is not None else None},
        "model_id": pipe.model_id, "backend": pipe.backend.name, "precision": pipe.backend.precision,
        "wall_s": round(wall, 2),
    }
