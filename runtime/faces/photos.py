"""Photos in, photos out: detect every face, align it as FFHQ was, sample it, paste it back.

Sample ``k`` of a photo is made of sample ``k`` of each of its faces (the noise of sample
``k`` depends on ``(seed, k)`` only, contracts.md section 4), so ``photo_s0_03.png`` is one
coherent alternative of the whole picture, and its faces are ``photo_face{j}_s0_03.png``.

Per face, the input mode follows the face's size in the photo:
- ``lr``: its FFHQ square is smaller than the model's HR size, so the aligned crop at the LR
  size is a real low-resolution observation and goes in as it is;
- ``hr``: the square holds more pixels than the HR size, so it is cropped at the HR size and
  degraded with the MATLAB bicubic (as ``--from-hr``), and the face is re-imagined consistently.

Outputs of one photo are written only when all its samples are finite, each file atomically.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from cvdvae import bicubic

from .. import outputs
from ..batching import sample_planned
from ..images import InputError, load_photo
from ..png import write_png_streamed
from .align import FaceSquare, crop
from .detector import DetectedFace, FaceDetector
from .paste import Placement, blend, blend_over, paste_order, place, upscale

PASTE_MODES = ("photo", "transparent", "none")
FAST_PNG_PIXELS = 4_000_000  # larger whole-photo outputs are deflated at level 1 (4x faster than 6, 1.3x larger)
MAX_OUTPUT_PIXELS = 400_000_000  # a whole-photo output (1.2 GB in 8-bit RGB); larger is refused up front


@dataclass(frozen=True)
class PhotoOptions:
    out: Path
    seed: int
    temperatures: np.ndarray
    upscale: float               # output photo size / input photo size
    min_face: int = 20           # smallest face searched for, in photo pixels
    max_faces: int | None = None  # keep the most confident ones
    min_score: float = 0.9       # O-Net's probability a face needs to be pasted (MTCNN's own cut: 0.7)
    paste: str = "photo"         # photo: on the upscaled photo; transparent: faces alone (RGBA); none
    grid: bool = True
    overwrite: bool = False


@dataclass
class AlignedFace:
    detected: DetectedFace
    square: FaceSquare
    mode: str              # "lr" or "hr", see the module docstring
    lr: np.ndarray         # [3, lr, lr] float32 0..255: the model's input
    hr: np.ndarray | None  # [3, H, W] uint8: the aligned HR crop in "hr" mode


@dataclass
class PhotoResult:
    path: Path
    size: tuple[int, int]                      # width, height (upright)
    faces: list[AlignedFace] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    non_finite_samples: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def report(self, upscale: float, hr_size: int) -> dict[str, Any]:
        """The --json record: each face's box, score, landmarks, mode and transform."""
        return {"input": str(self.path), "size": list(self.size), "upscale": upscale,
                "faces": [face_record(j, face, upscale, hr_size) for j, face in enumerate(self.faces)],
                "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
                "outputs": [str(p) for p in self.written]}


def face_record(index: int, face: AlignedFace, upscale: float, hr_size: int) -> dict[str, Any]:
    square = face.square
    return {"index": index, "box": _rounded(face.detected.box), "score": round(float(face.detected.score), 5),
            "landmarks": _rounded(face.detected.landmarks), "mode": face.mode,
            "square": {"centre": _rounded(square.c), "side": round(square.side, 3),
                       "angle_deg": round(float(np.degrees(np.arctan2(square.x[1], square.x[0]))), 3)},
            # sample pixel (x, y, 1) -> output photo pixel; pixel centres at integers
            "sample_to_output": _rounded(square.scaled(upscale).to_photo(hr_size)[:2])}


def _rounded(a: np.ndarray) -> list:
    return np.round(np.asarray(a, dtype=np.float64), 4).tolist()


def align_face(photo: np.ndarray, face: DetectedFace, lr_size: int, hr_size: int) -> AlignedFace:
    square = FaceSquare.from_landmarks(face.landmarks)
    if square.side < hr_size:
        lr = crop(photo, square, lr_size).transpose(2, 0, 1).astype(np.float32)
        return AlignedFace(face, square, "lr", lr, None)
    hr = np.ascontiguousarray(crop(photo, square, hr_size).transpose(2, 0, 1))
    return AlignedFace(face, square, "hr", bicubic.downscale_uint8(hr, hr_size // lr_size), hr)


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Add the block's wall time to ``timings[name]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def photo_outputs(out: Path, stem: str, seed: int, n: int, faces: int, options: PhotoOptions) -> list[Path]:
    paths = []
    for j in range(faces):
        face_stem = f"{stem}_face{j}"
        paths += outputs.planned(out, face_stem, seed, n, options.grid)
    if options.paste != "none":
        paths += [outputs.sample_path(out, stem, seed, k) for k in range(n)]
    return paths


def super_resolve_photo(path: Path, detector: FaceDetector, backend: Any, lr_size: int, hr_size: int,
                        options: PhotoOptions) -> PhotoResult:
    """Detect, align, sample and paste back the faces of one photo; ``InputError`` when it has
    none or its outputs exist."""
    timings: dict[str, float] = {}
    with timed(timings, "read"):
        photo = load_photo(path)
    result = PhotoResult(path, (photo.shape[1], photo.shape[0]), timings=timings)
    out_pixels = round(photo.shape[0] * options.upscale) * round(photo.shape[1] * options.upscale)
    if options.paste != "none" and out_pixels > MAX_OUTPUT_PIXELS:
        raise InputError(f"{path}: {result.size[0]}x{result.size[1]} at --upscale {options.upscale:g} is "
                         f"{out_pixels / 1e6:.0f} megapixels, more than the {MAX_OUTPUT_PIXELS / 1e6:.0f} written; "
                         "lower --upscale or use --no-paste")
    with timed(timings, "detect"):
        found = find_faces(photo, detector, options)
    if not found:
        raise InputError(f"{path}: {no_face_message(options)}")
    n = len(options.temperatures)
    planned = photo_outputs(options.out, path.stem, options.seed, n, len(found), options)
    existing = [p for p in planned if p.exists()]
    if existing and not options.overwrite:
        raise InputError(f"{path}: {existing[0]} exists ({len(existing)} outputs); pass --overwrite")
    with timed(timings, "align"):
        result.faces = [align_face(photo, face, lr_size, hr_size) for face in found]
    with timed(timings, "sample"):
        samples = sample_planned(backend, np.stack([f.lr for f in result.faces]), options.seed,
                                 options.temperatures)  # [faces, n, 3, H, W]
    result.non_finite_samples = sum(len(outputs.non_finite_samples(s)) for s in samples)
    if result.non_finite_samples:
        return result
    pixels = [[outputs.to_uint8(sample) for sample in face_samples] for face_samples in samples]
    options.out.mkdir(parents=True, exist_ok=True)
    with timed(timings, "write_faces"):
        for j, (face, tiles) in enumerate(zip(result.faces, pixels)):
            result.written += write_face(face, tiles, f"{path.stem}_face{j}", hr_size // lr_size, options)
    if options.paste != "none":
        result.written += paste_photos(photo, result.faces, pixels, path.stem, options, timings)
    return result


def find_faces(photo: np.ndarray, detector: FaceDetector, options: PhotoOptions) -> list[DetectedFace]:
    """The faces kept: at least ``min_score``, the ``max_faces`` most confident."""
    return [face for face in detector.detect(photo, min_face=options.min_face)
            if face.score >= options.min_score][:options.max_faces]


def no_face_message(options: PhotoOptions) -> str:
    return (f"no face found (faces of at least {options.min_face} px scoring at least {options.min_score} are "
            "searched for; --min-face and --min-score set them)")


def write_face(face: AlignedFace, tiles: list[np.ndarray], stem: str, scale: int,
               options: PhotoOptions) -> list[Path]:
    written = []
    for k, tile in enumerate(tiles):
        written.append(outputs.sample_path(options.out, stem, options.seed, k))
        outputs.write_png(written[-1], tile)
    if options.grid:
        lr = outputs.nearest_upscale(face.lr.round().astype(np.uint8), scale)
        hr = [face.hr.transpose(1, 2, 0)] if face.hr is not None else []
        written.append(outputs.grid_path(options.out, stem, options.seed))
        outputs.write_png(written[-1], outputs.grid([lr, *hr, *tiles]))
    return written


def paste_photos(photo: np.ndarray, faces: list[AlignedFace], pixels: list[list[np.ndarray]], stem: str,
                 options: PhotoOptions, timings: dict[str, float]) -> list[Path]:
    """One whole photo per sample k, written as it is made."""
    height, width = (round(side * options.upscale) for side in photo.shape[:2])
    compress = 1 if height * width > FAST_PNG_PIXELS else 6
    canvases = composites(photo, faces, pixels, options)
    written = []
    for k in range(len(options.temperatures)):
        with timed(timings, "paste"):
            canvas = next(canvases)
        with timed(timings, "write_photos"):
            written.append(outputs.sample_path(options.out, stem, options.seed, k))
            write_png_streamed(written[-1], canvas, compress)
    return written


def composites(photo: np.ndarray, faces: list[AlignedFace], pixels: list[list[np.ndarray]],
               options: PhotoOptions) -> Iterator[np.ndarray]:
    """Whole photo k for each sample k, each face's sample k blended in. One canvas is kept: each
    yield lends it until the next, when only the faces' regions are restored."""
    if options.paste == "photo":
        canvas = upscale(photo, options.upscale)
    else:
        height, width = photo.shape[:2]
        canvas = np.zeros((round(height * options.upscale), round(width * options.upscale), 4), np.uint8)
    hr_size = pixels[0][0].shape[0]
    order = paste_order([face.square for face in faces])
    placements: list[tuple[int, Placement]] = [
        (j, p) for j in order if (p := place(faces[j].square, options.upscale, hr_size, canvas.shape[:2])) is not None]
    pristine = [canvas[p.rows, p.cols].copy() for _, p in placements]
    for k in range(len(pixels[0])):
        for j, placement in placements:
            (blend if options.paste == "photo" else blend_over)(canvas, placement, pixels[j][k])
        yield canvas
        for (_, placement), original in zip(placements, pristine):
            canvas[placement.rows, placement.cols] = original
