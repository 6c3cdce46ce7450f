"""Training data: HR faces from a folder or the VD-VAE ``.npy`` array, LR made on the fly.

LR images come from the exact MATLAB bicubic degradation, rounded to uint8 after each pass
as the official data were; training pairs are flipped horizontally together at random.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..bicubic import downscale_uint8
from ..errors import CVDVAEError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
OFFICIAL_VALIDATION = 7000  # the last 7,000 of the seed-5 permutation of ffhq-256.npy


def split_indices(count: int, validation: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The official VD-VAE split: a NumPy seed-5 permutation, its last ``validation`` for validation.

    ``validation`` defaults to 7,000 for the full 70,000-image array and to a tenth otherwise.
    """
    if validation is None:
        validation = OFFICIAL_VALIDATION if count >= 10 * OFFICIAL_VALIDATION else max(1, count // 10)
    if not 0 < validation < count:
        raise CVDVAEError(f"cannot hold out {validation} of {count} images for validation")
    order = np.random.RandomState(5).permutation(count)
    return order[:-validation], order[-validation:]


class HRSource:
    """Random access to uint8 HWC HR images of one size."""

    def __init__(self, path: str | Path, hr_size: int):
        self.path, self.hr_size = Path(path), hr_size
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            self.array = None
            if not self.files:
                raise CVDVAEError(f"{self.path}: no training images ({', '.join(IMAGE_SUFFIXES)})")
        elif self.path.suffix == ".npy" and self.path.is_file():
            self.array = np.load(self.path, mmap_mode="r")
            self.files = []
            if self.array.ndim != 4 or self.array.shape[1:] != (hr_size, hr_size, 3) or self.array.dtype != np.uint8:
                raise CVDVAEError(f"{self.path}: expected uint8 [N, {hr_size}, {hr_size}, 3], "
                                  f"got {self.array.dtype} {list(self.array.shape)}")
        else:
            raise CVDVAEError(f"training data {self.path} not found: give a folder of {hr_size}x{hr_size} "
                              "images or the VD-VAE ffhq-256.npy array")

    def __len__(self) -> int:
        return len(self.array) if self.array is not None else len(self.files)

    def __getitem__(self, index: int) -> np.ndarray:
        if self.array is not None:
            return np.asarray(self.array[index])
        from PIL import Image

        with Image.open(self.files[index]) as img:
            if img.size != (self.hr_size, self.hr_size):
                raise CVDVAEError(f"{self.files[index]}: is {img.width}x{img.height}, training needs "
                                  f"{self.hr_size}x{self.hr_size}")
            return np.asarray(img.convert("RGB"), dtype=np.uint8)


@dataclass
class PairDataset(Dataset):
    """(HR, LR) float tensors [3, H, W] / [3, h, w] in 0..255.

    An item is ``i`` or ``(i, flip)``: the training order decides the flips (a function of
    seed and epoch), so a resumed run flips exactly what the uninterrupted one would.
    """

    source: HRSource
    indices: np.ndarray
    factor: int

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int | tuple[int, bool]) -> tuple[torch.Tensor, torch.Tensor]:
        i, flip = item if isinstance(item, tuple) else (item, False)
        hr = self.source[int(self.indices[i])].transpose(2, 0, 1)
        hr = np.ascontiguousarray(hr[:, :, ::-1] if flip else hr)
        lr = downscale_uint8(hr, self.factor)
        return torch.from_numpy(hr.astype(np.float32)), torch.from_numpy(lr)
