"""The FP32 reference every engine is checked against, kept in the export folder.

``DIR/reference.npz`` holds the export's validation cases: per case (B images, n samples)
the LR images, the temperatures, the noise seed, the FP32 output ``sr`` and, per pixel,
the margin of its mixture choice (best minus second-best Gumbel-perturbed score: where it
is tiny, two correct implementations may pick different mixtures). An fp32 graph's
reference is ONNX Runtime running that graph; a reduced-precision graph has no FP32 graph
beside it, so its reference is the PyTorch FP32 model it was cast from.

The noise is not stored: it is the contract's seeded noise, ``noise(seed, n)`` shared by the
case's images, which every backend makes itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvdvae.fileio import atomic_path

REFERENCE_NAME = "reference.npz"


@dataclass
class Case:
    lr: np.ndarray | None    # [B, 3, h, w] float32, 0..255 (None: a prior-only model)
    temperature: np.ndarray  # [n] float32
    seed: int
    sr: np.ndarray           # [B, n, 3, H, W] float32: the FP32 reference
    margin: np.ndarray       # [B, n, H, W] float32: mixture-choice margin

    @property
    def shape(self) -> tuple[int, int]:
        return self.sr.shape[0], self.sr.shape[1]


def save(path: Path, cases: list[Case], source: str) -> None:
    arrays: dict[str, np.ndarray] = {"source": np.array(source), "count": np.array(len(cases))}
    for i, case in enumerate(cases):
        arrays.update({f"{i}_temperature": case.temperature, f"{i}_seed": np.array(case.seed),
                       f"{i}_sr": case.sr, f"{i}_margin": case.margin.astype(np.float32)})
        if case.lr is not None:
            arrays[f"{i}_lr"] = case.lr
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load(path: Path) -> tuple[list[Case], str]:
    """The cases and what computed them (``onnxruntime-fp32`` or ``pytorch-fp32``)."""
    with np.load(path) as data:
        cases = [Case(data[f"{i}_lr"] if f"{i}_lr" in data else None, data[f"{i}_temperature"],
                      int(data[f"{i}_seed"]), data[f"{i}_sr"], data[f"{i}_margin"]) for i in range(int(data["count"]))]
        return cases, str(data["source"])
