"""Photos in, photos out: find every face, align it as FFHQ was, and paste its samples back.

The flow, in memory (``Pipeline.faces`` runs it; ``cvdvae run --faces`` and ``cvdvae serve``
write or encode what it returns):

1. ``find_faces``: the detector's faces that score at least ``min_score``, the ``max_faces``
   most confident; ``align_face`` makes each into the model's input;
2. the faces are sampled together (the pipeline's one sampling path);
3. ``Composites``: whole photo ``k`` is the photo upscaled with face ``j``'s sample ``k``
   blended in, for every face. The noise of sample ``k`` depends on ``(seed, k)`` only
   (docs/contract/noise-and-seeds.md), so photo ``k`` is one coherent alternative of the whole picture.

Per face, the input mode follows the face's size in the photo:
- ``lr``: its FFHQ square is smaller than the model's HR size, so the aligned crop at the LR
  size is a real low-resolution observation and goes in as it is;
- ``hr``: the square holds more pixels than the HR size, so it is cropped at the HR size and
  degraded with the MATLAB bicubic (as ``from_hr``), and the face is re-imagined consistently.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from cvdvae import bicubic

from ..images import outputs
from ..images.photo_files import FileWriter, Pixels, PhotoEncoder, output_pixels
from ..images.photo_format import PhotoFormat, png_level
from ..images.png import write_png_streamed
from ..images.summary import FrameMoments, FrameSummary, Summary, summarise
from ..limits import MAX_FACES
from ..timings import timed
from .align import FaceSquare, crop
from .detector import DetectedFace, FaceDetector
from .paste import (MaskBand, Placement, blend, blend_over, canvas_map, mask_bands, output_shape, paste_order,
                    place, upscale)

PASTE_MODES = ("photo", "transparent", "none")  # on the upscaled photo; the faces alone (RGBA); no photos


@dataclass(frozen=True)
class FaceSearch:
    min_face: int = 20            # smallest face searched for, in photo pixels
    max_faces: int = MAX_FACES    # keep the most confident ones (memory: samples of every face are held)
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

    def summary(self) -> Summary:
        """The mean and spread of the face's samples (``runtime.images.summary``)."""
        return summarise(self.samples)

    @property
    def box(self) -> np.ndarray:
        return self.detected.box

    @property
    def landmarks(self) -> np.ndarray:
        return self.detected.landmarks

    def record(self, index: int, to_output: np.ndarray, hr_size: int) -> dict[str, Any]:
        """The face's JSON record: box, score, landmarks, mode, its square's transform and enlargement."""
        square = self.square
        sample_to_output = to_output @ square.to_photo(hr_size)
        return {"index": index, "box": _rounded(self.box), "score": round(float(self.detected.score), 5),
                "landmarks": _rounded(self.landmarks), "mode": self.mode,
                "square": {"centre": _rounded(square.c), "side": round(square.side, 3),
                           "angle_deg": round(float(np.degrees(np.arctan2(square.x[1], square.x[0]))), 3)},
                # sample pixel (x, y, 1) -> output photo pixel; pixel centres at integers
                "sample_to_output": _rounded(sample_to_output[:2]),
                # output pixels per sample pixel: above 1 the sample is enlarged, and softer than
                # the photo around it by as much (docs/guides/photos.md, "Faces big and small")
                "enlargement": round(float(np.linalg.norm(sample_to_output[:2, :2], ord=2)), 4)}


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


def background(photo: np.ndarray, factor: float, paste: str, alpha: np.ndarray | None = None) -> np.ndarray:
    """The canvas the faces are pasted on (``paste`` "photo": the photo upscaled by ``factor``, with
    its own ``alpha`` upscaled alongside; "transparent": a transparent RGBA canvas)."""
    if paste != "photo":
        return np.zeros((*output_shape(photo.shape[:2], factor), 4), np.uint8)
    canvas = upscale(photo, factor)
    if alpha is not None:  # the faces were read over white; the photo's transparency stays its own
        canvas = np.concatenate([canvas, upscale(alpha, factor)[..., None]], axis=2)
    return canvas


class Composites:
    """Whole photo k for each sample k, each face's sample k blended into ``canvas`` (``paste``
    "photo": the upscaled photo, ``background``, made grey again for a ``grey`` photo;
    "transparent": alone on a transparent RGBA canvas). The canvas is lent to each photo until the
    next, and only the faces' regions are restored after each one: iterations share it and never
    overlap. ``regions``: the (rows, columns) any face touches; outside them every whole photo is
    ``canvas``."""

    def __init__(self, photo_shape: tuple[int, int], canvas: np.ndarray, faces: list[Face], paste: str,
                 grey: bool = False):
        hr_size = faces[0].samples.shape[1]
        to_output = canvas_map(photo_shape, canvas.shape[:2])
        order = paste_order([face.square for face in faces])
        self.placements: list[tuple[int, Placement]] = [
            (j, p) for j in order if (p := place(faces[j].square, to_output, hr_size, canvas.shape[:2])) is not None]
        self.regions = [(p.rows, p.cols) for _, p in self.placements]
        self.canvas, self.faces, self.paste, self.grey = canvas, faces, paste, grey

    def __iter__(self) -> Iterator[np.ndarray]:
        """The whole photos, grey for a grey photo."""
        for canvas in self.frames():
            yield as_grey(canvas) if self.grey and self.paste == "photo" else canvas

    def frames(self) -> Iterator[np.ndarray]:
        """The canvas with each sample k pasted in (RGB or RGBA, never made grey: ``pixels`` does that
        a band at a time)."""
        canvas = self.canvas
        pristine = [canvas[p.rows, p.cols].copy() for _, p in self.placements]
        masks = self.masks
        for k in range(len(self.faces[0].samples)):
            try:
                for (j, placement), face_masks in zip(self.placements, masks):
                    (blend if self.paste == "photo" else blend_over)(canvas, placement, self.faces[j].samples[k],
                                                                     face_masks)
                yield canvas
            finally:
                for (_, placement), original in zip(self.placements, pristine):
                    canvas[placement.rows, placement.cols] = original

    @cached_property
    def masks(self) -> list[list[MaskBand]]:
        """Each placed face's mask, in bands (``paste.mask_bands``): made once, shared by every sample
        (one byte per pixel of the face's region)."""
        return [list(mask_bands(placement)) for _, placement in self.placements]

    def pixels(self, keep_alpha: bool = True) -> Pixels:
        """``frame, rows -> pixels``: a frame's rows as the whole photo's (``photo_files.output_pixels``)."""
        return output_pixels(self.grey and self.paste == "photo", keep_alpha)


def as_grey(canvas: np.ndarray) -> np.ndarray:
    """RGB(A) -> grey (+ alpha) by ITU-R 601 luma, as Pillow's ``convert("L")``: a grey photo's
    whole photos are grey, the faces pasted in too."""
    from PIL import Image

    luma = np.asarray(Image.fromarray(np.ascontiguousarray(canvas[..., :3])).convert("L"))
    return np.stack([luma, canvas[..., 3]], axis=2) if canvas.shape[2] == 4 else luma


@dataclass
class PhotoFaces:
    """A photo and its faces, found and aligned (``Pipeline.detect_faces``), not yet sampled."""

    photo: np.ndarray        # [H, W, 3] uint8, upright sRGB (transparent parts over white)
    faces: list[Face]
    name: str
    timings: dict[str, float] = field(default_factory=dict)
    alpha: np.ndarray | None = None  # [H, W] uint8: the photo's transparency, kept in the whole photos
    grey: bool = False               # a grey photo: its whole photos are grey
    format: str | None = None        # the file format it was read from ("JPEG", "PNG", "WEBP"), when a file


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
    alpha: np.ndarray | None = None      # the photo's transparency (``PhotoFaces``)
    grey: bool = False
    format: str | None = None            # the input's file format (``PhotoFaces``)

    @cached_property
    def background(self) -> np.ndarray:
        """The canvas every whole photo starts from (``photos.background``), made once (timed as
        "enlarge") and shared by every pass over the composites."""
        with timed(self.timings, "enlarge"):
            return background(self.photo, self.upscale, self.paste, self.alpha)

    def composites(self) -> Composites:
        """Whole photo k (HWC uint8; RGBA when ``paste`` is "transparent") for each sample k. One
        canvas is lent at a time, until the next: copy what must outlive the loop, and iterate over
        one ``composites`` at a time."""
        if self.paste == "none":
            raise ValueError("paste 'none' makes no whole photos")
        return Composites(self.photo.shape[:2], self.background, self.faces, self.paste, self.grey)

    def photo_format(self, choice: PhotoFormat = PhotoFormat()) -> PhotoFormat:
        """``choice`` decided for these photos: the input's own format unless one was named."""
        return choice.chosen(self.format, self.paste == "transparent")

    def encoded(self, choice: PhotoFormat = PhotoFormat(), moments: FrameMoments | None = None) -> Iterator[bytes]:
        """Whole photo k's file, as pieces to write in order, for each sample k (``photo_files``):
        the background's unchanged bands encoded once. ``moments`` sees every frame on its way."""
        fmt = self.photo_format(choice)
        canvases = self.composites()
        with ThreadPoolExecutor(os.cpu_count()) as pool:
            with timed(self.timings, "encode"):
                encoder = PhotoEncoder(fmt, self.background, [rows for rows, _ in canvases.regions],
                                       canvases.pixels(keep_alpha=fmt.name != "jpeg"), pool)
            frames = canvases.frames()
            for _ in range(len(self.temperatures)):
                with timed(self.timings, "paste"):
                    frame = next(frames)
                if moments is not None:
                    with timed(self.timings, "summary"):
                        moments.add(as_grey(frame) if canvases.grey and self.paste == "photo" else frame)
                with timed(self.timings, "encode"):
                    pieces = encoder.encode(frame)
                yield pieces
            frames.close()

    @cached_property
    def photos(self) -> list[np.ndarray]:
        """The n whole photos, each its own array (made on first use; ``composites`` streams them)."""
        return [] if self.paste == "none" else [canvas.copy() for canvas in self.composites()]

    @cached_property
    def summary(self) -> FrameSummary | None:
        """The whole photos' mean and spread (None with ``paste`` "none"), made by one more pass
        over the composites unless ``write_photo`` made it on its way."""
        return None if self.paste == "none" else photo_summary(self.composites())

    @property
    def mean(self) -> np.ndarray | None:
        """[H, W, C] float32: the whole photos' mean, in 8-bit units."""
        return None if self.summary is None else self.summary.mean

    @property
    def std(self) -> np.ndarray | None:
        """[H, W] float32: the whole photos' per-pixel standard deviation, in 8-bit levels: 0 but
        where faces are, and there it shows where the photo's alternatives differ."""
        return None if self.summary is None else self.summary.std

    @property
    def size(self) -> tuple[int, int]:
        return self.photo.shape[1], self.photo.shape[0]

    @property
    def png_level(self) -> int:
        """The zlib level whole photos are encoded at (``runtime.images.photo_format``)."""
        return png_level(*output_shape(self.photo.shape[:2], self.upscale))

    def face_grid(self, index: int, scale: int | None, summary: Summary | None = None) -> np.ndarray:
        """Face ``index``'s grid: its LR input enlarged (nearest), its HR crop in "hr" mode, its
        samples, and its ``summary``'s two pictures when given."""
        face = self.faces[index]
        return outputs.input_grid(face.lr, face.hr, face.samples, scale, summary)

    def record(self, hr_size: int) -> dict[str, Any]:
        """The photo's JSON record: its size, the upscale, each face's record, the timings."""
        to_output = canvas_map(self.photo.shape[:2], output_shape(self.photo.shape[:2], self.upscale))
        return {"size": list(self.size), "upscale": self.upscale,
                "faces": [face.record(j, to_output, hr_size) for j, face in enumerate(self.faces)],
                "timings_s": {k: round(v, 4) for k, v in self.timings.items()}}


def photo_summary(canvases: Composites) -> FrameSummary:
    """The mean and spread of the whole photos ``canvases`` makes (memory follows the faces' regions)."""
    moments = FrameMoments(canvases.regions)
    for canvas in canvases:
        moments.add(canvas)
    return moments.summary()


def photo_outputs(out: Path, stem: str, seed: int, n: int, faces: int, grid: bool, paste: str,
                  summary: bool = False, suffix: str = ".png") -> list[Path]:
    """The files ``write_photo`` makes for a photo with ``faces`` faces, its whole photos ending in
    ``suffix`` (``PhotoFormat.suffix``)."""
    paths = [p for j in range(faces) for p in outputs.planned(out, f"{stem}_face{j}", seed, n, grid, summary)]
    if paste == "none":
        return paths
    return (paths + [outputs.sample_path(out, stem, seed, k, suffix) for k in range(n)]
            + (list(outputs.summary_paths(out, stem, seed)) if summary else []))


def write_photo(result: FacesOutput, out: Path, stem: str, grid: bool, scale: int | None,
                summary: bool = False, photo_format: PhotoFormat = PhotoFormat()) -> list[Path]:
    """Each face's samples (``{stem}_face{j}_s{seed}_{k:02d}.png``) and grid, then whole photo k
    (``{stem}_s{seed}_{k:02d}`` in ``photo_format``, by default the input's own) for each sample k,
    written on a thread as the next is made; with ``summary`` each face's and the whole photos'
    mean and standard deviation map (``_mean``, ``_std``, PNG)."""
    written: list[Path] = []
    with timed(result.timings, "write_faces"):
        for j, face in enumerate(result.faces):
            spread = face.summary() if summary else None
            written += outputs.write_samples(out, f"{stem}_face{j}", result.seed, face.samples,
                                             result.face_grid(j, scale, spread) if grid else None)
            if spread is not None:
                written += outputs.write_summary(out, f"{stem}_face{j}", result.seed, spread)
    if result.paste == "none":
        return written
    suffix = result.photo_format(photo_format).suffix
    moments = FrameMoments(result.composites().regions) if summary else None
    writer = FileWriter()
    try:
        for k, pieces in enumerate(result.encoded(photo_format, moments)):
            with timed(result.timings, "write_photos"):
                written.append(outputs.sample_path(out, stem, result.seed, k, suffix))
                writer.write(written[-1], pieces)
    finally:
        with timed(result.timings, "write_photos"):
            writer.close()
    if moments is not None:
        with timed(result.timings, "summary"):
            result.summary = whole = moments.summary()
            for path, pixels in zip(outputs.summary_paths(out, stem, result.seed),
                                    (whole.mean_pixels(), whole.std_pixels())):
                written.append(path)
                write_png_streamed(path, pixels, result.png_level)
    return written
