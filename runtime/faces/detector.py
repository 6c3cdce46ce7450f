"""Faces and five landmarks in a photo: MTCNN (Zhang et al. 2016) on ONNX Runtime, numpy around it.

The graphs are ``$CVDVAE_HOME/mtcnn/{pnet,rnet,onet}.onnx`` (``cvdvae fetch mtcnn``; inputs and
outputs in ``cvdvae.hub.mtcnn_graphs``). Three stages, as in the paper and facenet-pytorch:

1. P-Net scans an image pyramid (each level ``0.709`` times the last, the first scaled so that
   ``min_face`` pixels become P-Net's 12); windows scoring ``>= 0.6`` are kept, suppressed within
   their level (IoU 0.5) and across levels (IoU 0.7), moved by their regression and squared.
2. R-Net scores a 24x24 crop of each: ``> 0.7`` kept, suppressed (IoU 0.7), regressed, squared.
3. O-Net scores a 48x48 crop of each: ``> 0.7`` kept; landmarks read off the crop, boxes
   regressed, then suppressed by intersection over the smaller box (0.7).

Pyramid levels and crops are resized by area averaging (Pillow's BOX filter, as facenet's
``interpolate(mode="area")``); crops leaving the photo are padded with zeros (black, as the
original MATLAB code; facenet clips instead).

Coordinates. Results use continuous pixel coordinates in which the centre of pixel (row r,
column c) is at (x=c, y=r); the photo spans ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``. Inside,
everything is in edge coordinates (pixel c spans ``[c, c + 1]``), where resizing is exact: a
pyramid level ``s`` times the size maps edge ``x`` to ``s * x``, a P-Net output cell ``j``
covers level edges ``[2j, 2j + 12]``, a crop of integer edges ``[x0, x1]`` fills its network
input exactly, and a landmark at fraction ``p`` of the crop is at edge ``x0 + p * (x1 - x0)``.
The MATLAB code's ``+1``/``-1`` (1-based indices, inclusive widths) are not copied: the
only shift is edge -> centre, ``-0.5``, applied once on the way out. Verified in
tests/test_face_detection.py, over LFW faces: enlarging a photo twice (nearest) maps landmarks
to ``2 (x + 0.5) - 0.5`` within 0.2 px on average (an offset e would show as -e), and mirroring
maps them to ``W - 1 - x`` up to the network's own asymmetry, which grows with the face; its
intercept at size 0, where an offset would show as 2e, is 0.0-0.1 px (MATLAB's ``x0 - 1 + w p``,
half a pixel off, would give -1). On skimage's astronaut the landmarks lie within 1-3 px of
hand-measured eyes and nose.

Speed and precision at the default thresholds (faces found in LFW, none in face-free photos)
are measured in tests/test_face_detection.py and docs/guides/photos.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cvdvae.errors import CVDVAEError
from cvdvae.hub.home import cvdvae_home
from cvdvae.hub.mtcnn_graphs import CROP_SIZES, FILES, FORMAT, INPUT, LANDMARKS, PROBABILITY, REGRESSION

from . import boxes as bx

THRESHOLDS = (0.6, 0.7, 0.7)  # P-, R-, O-Net face probability
PYRAMID_FACTOR = 0.709         # about 1/sqrt(2): each level halves the area of the last
CELL, STRIDE = 12, 2           # P-Net's window and step, in pyramid-level pixels
MAX_BATCH = 512                # crops per R/O-Net call: bounds memory on a crowded photo


@dataclass(frozen=True)
class DetectedFace:
    box: np.ndarray        # (4,) float64 x0, y0, x1, y1 in photo pixel coordinates (the box's outer edges)
    score: float           # O-Net face probability
    landmarks: np.ndarray  # (5, 2) float64 (x, y): eye on the image's left, eye on the image's right, nose tip,
    #                        mouth corner on the image's left, mouth corner on the image's right


def _threads() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(cpus, 8)  # the three small nets stop gaining beyond a few cores


def _normalise(batch: np.ndarray) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` -> float32 ``[N, 3, H, W]``, ``(x - 127.5) / 128`` as MTCNN was trained."""
    return ((batch.astype(np.float32) - 127.5) * (1 / 128)).transpose(0, 3, 1, 2)


def _resize(image: np.ndarray | Image.Image, width: int, height: int) -> np.ndarray:
    image = image if isinstance(image, Image.Image) else Image.fromarray(image)
    return np.asarray(image.resize((width, height), Image.Resampling.BOX))


class FaceDetector:
    """MTCNN with ONNX Runtime on the CPU; ``detect`` finds faces and their five landmarks."""

    def __init__(self, sessions: dict[str, Any]):
        self.sessions = sessions

    @classmethod
    def from_folder(cls, folder: Path | None = None, threads: int | None = None) -> "FaceDetector":
        """Load ``folder`` (default ``$CVDVAE_HOME/mtcnn``) with ``threads`` (default: the usable CPUs, up to 8)."""
        folder = Path(folder) if folder is not None else cvdvae_home() / "mtcnn"
        missing = [name for name in FILES.values() if not (folder / name).is_file()]
        if missing:
            raise CVDVAEError(f"no MTCNN face detector in {folder} ({', '.join(missing)} missing); "
                              "fetch it with `cvdvae fetch mtcnn`")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or _threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Many short calls with numpy work between them: idle threads that spin only steal the
        # cores from that work.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions = {}
        for net, name in FILES.items():
            try:
                sessions[net] = ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])
                made_as = sessions[net].get_modelmeta().custom_metadata_map.get("format")
            except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
                raise CVDVAEError(f"ONNX Runtime cannot load {folder / name} ({str(err).splitlines()[0]}); "
                                  "fetch it again with `cvdvae fetch mtcnn --overwrite`") from None
            if made_as != FORMAT:
                raise CVDVAEError(f"{folder / name} is {made_as or 'not a cvdvae graph'}, this cvdvae reads {FORMAT}; "
                                  "make it again with `cvdvae fetch mtcnn --overwrite`")
        return cls(sessions)

    def detect(self, rgb: np.ndarray, min_face: int = 20) -> list[DetectedFace]:
        """Faces of at least about ``min_face`` pixels in ``rgb`` (``[H, W, 3]`` uint8), best score first."""
        if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
            raise ValueError(f"rgb must be an [H, W, 3] uint8 array, not {getattr(rgb, 'shape', type(rgb))}")
        if min_face < CELL:
            raise ValueError(f"min_face must be at least {CELL} pixels (P-Net's window), not {min_face}")
        boxes = self._propose(rgb, min_face)
        boxes = self._refine(rgb, boxes)
        boxes, scores, landmarks = self._output(rgb, boxes)
        return [DetectedFace(box - 0.5, float(score), points - 0.5)  # edge -> centre coordinates
                for box, score, points in zip(boxes, scores, landmarks)]

    # ---------------------------------------------------------------- stages
    def _propose(self, rgb: np.ndarray, min_face: int) -> np.ndarray:
        """Stage 1: P-Net over the pyramid -> squared candidate boxes ``[K, 4]`` (edge coordinates)."""
        h, w = rgb.shape[:2]
        photo, found, scale = Image.fromarray(rgb), [], CELL / min_face
        while min(h, w) * scale >= CELL:
            # MTCNN's level size; the boxes below use the level's true scale per axis
            lw, lh = int(w * scale + 1), int(h * scale + 1)
            probability, regression = self.sessions["pnet"].run(
                [PROBABILITY, REGRESSION], {INPUT: _normalise(_resize(photo, lw, lh)[None])})
            rows, cols = np.nonzero(probability[0] >= THRESHOLDS[0])
            if rows.size:
                level = np.stack([cols, rows, cols, rows], axis=1) * STRIDE + [0, 0, CELL, CELL]
                windows = level / [lw / w, lh / h, lw / w, lh / h]
                scores = probability[0, rows, cols]
                keep = bx.nms(windows, scores, 0.5)
                found.append((windows[keep], scores[keep], regression[0][:, rows, cols].T[keep]))
            scale *= PYRAMID_FACTOR
        if not found:
            return np.zeros((0, 4))
        windows, scores, offsets = (np.concatenate(parts) for parts in zip(*found))
        keep = bx.nms(windows, scores, 0.7)
        return bx.square(bx.regress(windows[keep], offsets[keep]))

    def _refine(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Stage 2: R-Net on 24x24 crops -> the boxes it keeps, regressed and squared."""
        if not len(boxes):
            return boxes
        pixels = bx.to_pixels(boxes)
        probability, offsets = self._run("rnet", rgb, pixels, [PROBABILITY, REGRESSION])
        face = probability > THRESHOLDS[1]
        # regression is relative to the crop R-Net saw: the integer box, not the one proposed
        crops, probability, offsets = pixels[face].astype(np.float64), probability[face], offsets[face]
        keep = bx.nms(crops, probability, 0.7)
        return bx.square(bx.regress(crops[keep], offsets[keep]))

    def _output(self, rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stage 3: O-Net on 48x48 crops -> boxes ``[K, 4]``, scores ``[K]``, landmarks ``[K, 5, 2]``."""
        if not len(boxes):
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        pixels = bx.to_pixels(boxes)
        probability, offsets, points = self._run("onet", rgb, pixels, [PROBABILITY, REGRESSION, LANDMARKS])
        face = probability > THRESHOLDS[2]
        crops, probability = pixels[face].astype(np.float64), probability[face].astype(np.float64)
        landmarks = crops[:, None, :2] + points[face] * (crops[:, None, 2:] - crops[:, None, :2])
        boxes = bx.regress(crops, offsets[face])
        keep = bx.nms(boxes, probability, 0.7, mode="min")
        return boxes[keep], probability[keep], landmarks[keep]

    def _run(self, net: str, rgb: np.ndarray, pixels: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
        """``net`` on the crops ``pixels`` (integer edges) of ``rgb``, area-resized to its input size."""
        size = CROP_SIZES[net]
        crops = np.stack([_resize(bx.crop(rgb, box), size, size) for box in pixels])
        parts = [self.sessions[net].run(outputs, {INPUT: _normalise(crops[i:i + MAX_BATCH])})
                 for i in range(0, len(crops), MAX_BATCH)]
        return [np.concatenate(p) for p in zip(*parts)]
