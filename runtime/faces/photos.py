"""Photos in, photos out: find every face, align it as FFHQ was, and paste its samples back.

The flow, in memory (``Pipeline.faces`` runs it; ``cvdvae run --faces`` and ``cvdvae serve``
write or encode what it returns):

1. ``find_faces``: the detector's faces that score at least ``min_score``, the ``max_faces``
   most confident; ``align_face`` makes each into the model's input;
2. the faces are sampled together (the pipeline's one sampling path);
3. ``composites``: whole photo ``k`` is the photo upscaled with face ``j``'s sample ``k``
   blended in, for every face. The noise of sample ``k`` depends on ``(seed, k)`` only
   (contracts.md section 4), so photo ``k`` is one coherent alternative of the whole picture.

Per face, the input mode follows the face's size in the photo:
- ``lr``: its FFHQ square is smaller than the model's HR size, so the aligned crop at the LR
  size is a real low-resolution observation and goes in as it is;
- ``hr``: the square holds more pixels than the HR size, so it is cropped at the HR size and
  degraded with the MATLAB bicubic (as ``from_hr``), and the face is re-imagined consistently.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from cvdvae import bicubic

from ..images import outputs
from ..images.png import write_png_streamed
from .align import FaceSquare, crop
from .detector import DetectedFace, FaceDetector
from .paste import Placement, blend, blend_over, paste_order, place, upscale

PASTE_MODES = ("photo", "transparent", "none")  # on the upscaled photo; the faces alone (RGBA); no photos
FAST_PNG_PIXELS = 4_000_000  # larger whole photos are deflated at level 1: much faster, a little larger


@dataclass(frozen=True)
class FaceSearch:
    min_face: int = 20            # smallest face searched for, in photo pixels
    max_faces: int | None = None  # keep the most confident ones
    min_score: float = 0.9        # O-Net's probability a face needs (MTCNN's own cut: 0.7)

    def no_face_message(self) -> str:
        return (f"no face found (faces of at least {self.min_face} px scoring at least {self.min_score} are "
                "searched for; {min_face} and {min_score} set them)")


@dataclass
class Face:
    """One face of a photo: where it is, what the model took, and (once sampled) its samples."""

    detected: DetectedFace
    square: FaceSquare
    mode: str                        # "lr" or "hr", see the module docstring
    lr: np.ndarray                   # [3, lr, lr] float32 0..255: the model's input
    hr: np.ndarray | None            # [H, W, 3] uint8: the aligned HR crop in "hr" mode
    samples: np.ndarray | None = None  # [n, H, W, 3] uint8

    @property
    def box(self) -> np.ndarray:
        return self.detected.box

    @property
    def landmarks(self) -> np.ndarray:
        return self.detected.landmarks

    def record(self, index: int, upscale: float, hr_size: int) -> dict[str, Any]:
        """The face's JSON record: box, score, landmarks, mode and its square's transform."""
        square = self.square
        return {"index": index, "box": _rounded(self.box), "score": round(float(self.detected.score), 5),
                "landmarks": _rounded(self.landmarks), "mode": self.mode,
                "square": {"centre": _rounded(square.c), "side": round(square.side, 3),
                           "angle_deg": round(float(np.degrees(np.arctan2(square.x[1], square.x[0]))), 3)},
                # sample pixel (x, y, 1) -> output photo pixel; pixel centres at integers
                "sample_to_output": _rounded(square.scaled(upscale).to_photo(hr_size)[:2])}


def _rounded(a: np.ndarray) -> list:
    return np.round(np.asarray(a, dtype=np.float64), 4).tolist()


def find_faces(photo: np.ndarray, detector: FaceDetector, search: FaceSearch) -> list[DetectedFace]:
    """The faces kept: at least ``min_score``, the ``max_faces`` most confident (best first)."""
    return [face for face in detector.detect(photo, min_face=search.min_face)
            if face.score >= search.min_score][:search.max_faces]


def align_face(photo: np.ndarray, face: DetectedFace, lr_size: int, hr_size: int) -> Face:
    square = FaceSquare.from_landmarks(face.landmarks)
    if square.side < hr_size:
        lr = crop(photo, square, lr_size).transpose(2, 0, 1).astype(np.float32)
        return Face(face, square, "lr", lr, None)
    hr = crop(photo, square, hr_size)
    lr = bicubic.downscale_uint8(np.ascontiguousarray(hr.transpose(2, 0, 1)), hr_size // lr_size)
    return Face(face, square, "hr", lr.astype(np.float32), hr)


def output_size(photo: np.ndarray, factor: float) -> tuple[int, int]:
    """(height, width) of a whole-photo output ``factor`` times the photo."""
    return round(photo.shape[0] * factor), round(photo.shape[1] * factor)


def composites(photo: np.ndarray, faces: list[Face], factor: float, paste: str) -> Iterator[np.ndarray]:
    """Whole photo k for each sample k, each face's sample k blended in (``paste`` "photo": on the
    photo upscaled by ``factor``; "transparent": alone on a transparent RGBA canvas). One canvas
    is kept: each yield lends it until the next, when only the faces' regions are restored."""
    if paste == "photo":
        canvas = upscale(photo, factor)
    else:
        canvas = np.zeros((*output_size(photo, factor), 4), np.uint8)
    hr_size = faces[0].samples.shape[1]
    order = paste_order([face.square for face in faces])
    placements: list[tuple[int, Placement]] = [
        (j, p) for j in order if (p := place(faces[j].square, factor, hr_size, canvas.shape[:2])) is not None]
    pristine = [canvas[p.rows, p.cols].copy() for _, p in placements]
    for k in range(len(faces[0].samples)):
        for j, placement in placements:
            (blend if paste == "photo" else blend_over)(canvas, placement, faces[j].samples[k])
        yield canvas
        for (_, placement), original in zip(placements, pristine):
            canvas[placement.rows, placement.cols] = original


@dataclass
class PhotoFaces:
    """A photo and its faces, found and aligned (``Pipeline.detect_faces``), not yet sampled."""

    photo: np.ndarray        # [H, W, 3] uint8, upright sRGB
    faces: list[Face]
    name: str
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class FacesOutput:
    """Whole photos and their faces (``Pipeline.faces``)."""

    photo: np.ndarray
    faces: list[Face]                    # each with its box, landmarks, mode and samples [n, H, W, 3]
    seed: int
    temperatures: np.ndarray
    upscale: float                       # output photo size / input photo size
    paste: str                           # "photo", "transparent" or "none"
    name: str
    timings: dict[str, float] = field(default_factory=dict)
    non_finite: list[list[int]] = field(default_factory=list)  # per face, the samples that held NaN/Inf

    def composites(self) -> Iterator[np.ndarray]:
        """Whole photo k (HWC uint8; RGBA when ``paste`` is "transparent") for each sample k. One
        canvas is lent at a time, until the next: copy what must outlive the loop."""
        if self.paste == "none":
            return iter(())
        return composites(self.photo, self.faces, self.upscale, self.paste)

    @cached_property
    def photos(self) -> list[np.ndarray]:
        """The n whole photos, each its own array (made on first use; ``composites`` streams them)."""
        return [canvas.copy() for canvas in self.composites()]

    @property
    def size(self) -> tuple[int, int]:
        return self.photo.shape[1], self.photo.shape[0]

    @property
    def png_level(self) -> int:
        """The zlib level whole photos are encoded at (``runtime.images.png``)."""
        height, width = output_size(self.photo, self.upscale)
        return 1 if height * width > FAST_PNG_PIXELS else 6

    def face_grid(self, index: int, scale: int | None) -> np.ndarray:
        """Face ``index``'s grid: its LR input enlarged (nearest), its HR crop in "hr" mode, its samples."""
        face = self.faces[index]
        return outputs.input_grid(face.lr, face.hr, face.samples, scale)

    def record(self, hr_size: int) -> dict[str, Any]:
        """The photo's JSON record: its size, the upscale, each face's record, the timings."""
        return {"size": list(self.size), "upscale": self.upscale,
                "faces": [face.record(j, self.upscale, hr_size) for j, face in enumerate(self.faces)],
                "timings_s": {k: round(v, 4) for k, v in self.timings.items()}}


def photo_outputs(out: Path, stem: str, seed: int, n: int, faces: int, grid: bool, paste: str) -> list[Path]:
    """The files ``write_photo`` makes for a photo with ``faces`` faces."""
    paths = [p for j in range(faces) for p in outputs.planned(out, f"{stem}_face{j}", seed, n, grid)]
    return paths + ([outputs.sample_path(out, stem, seed, k) for k in range(n)] if paste != "none" else [])


def write_photo(result: FacesOutput, out: Path, stem: str, grid: bool, scale: int | None) -> list[Path]:
    """Each face's samples (``{stem}_face{j}_s{seed}_{k:02d}.png``) and grid, then whole photo k
    (``{stem}_s{seed}_{k:02d}.png``) for each sample k, written as it is made."""
    written: list[Path] = []
    with timed(result.timings, "write_faces"):
        for j, face in enumerate(result.faces):
            written += outputs.write_samples(out, f"{stem}_face{j}", result.seed, face.samples,
                                             result.face_grid(j, scale) if grid else None)
    level = result.png_level
    canvases = result.composites()
    for k in range(len(result.temperatures) if result.paste != "none" else 0):
        with timed(result.timings, "paste"):
            canvas = next(canvases)
        with timed(result.timings, "write_photos"):
            written.append(outputs.sample_path(out, stem, result.seed, k))
            write_png_streamed(written[-1], canvas, level)
    return written


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Add the block's wall time to ``timings[name]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
