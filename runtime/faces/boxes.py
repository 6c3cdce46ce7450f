"""Box arithmetic for face detection, in numpy: non-maximum suppression, squaring, regression, crops.

A box is ``(x0, y0, x1, y1)``: the edges of a region, so its width is ``x1 - x0`` (no MATLAB
``+ 1``). Arrays of boxes are ``[K, 4]`` float64; ``crop`` takes integer edges, in the frame where
pixel (row r, column c) spans ``[c, c + 1] x [r, r + 1]``.
"""

from __future__ import annotations

import numpy as np


def areas(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def intersections(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Area shared by ``box`` ``(4,)`` and each of ``boxes`` ``[K, 4]``."""
    w = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    h = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "iou") -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first.

    Boxes are visited best first; one is dropped when its overlap with a box already kept exceeds
    ``threshold``. Overlap is intersection over union (``"iou"``) or intersection over the
    smaller area (``"min"``, MTCNN's last stage: also drops a small box inside a big one).
    """
    if mode not in ("iou", "min"):
        raise ValueError(f"mode must be 'iou' or 'min', not {mode!r}")
    order, area, keep = np.argsort(-scores, kind="stable"), areas(boxes), []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        inter = intersections(boxes[best], boxes[rest])
        base = area[best] + area[rest] - inter if mode == "iou" else np.minimum(area[best], area[rest])
        order = rest[inter <= threshold * base]  # multiplied out: no 0/0 for empty boxes
    return np.array(keep, dtype=np.int64)


def square(boxes: np.ndarray) -> np.ndarray:
    """Squares with the same centres, as wide as the longer side."""
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)


def regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Move each edge by its offset ``[K, 4]``, in units of the box's width (x) or height (y)."""
    size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    return boxes + offsets * np.tile(size, 2)


def to_pixels(boxes: np.ndarray) -> np.ndarray:
    """Integer edges: the corner rounded, the width and height rounded (at least 1), so squares stay square."""
    corner = np.floor(boxes[:, :2] + 0.5)
    size = np.maximum(np.floor(boxes[:, 2:] - boxes[:, :2] + 0.5), 1)
    return np.concatenate([corner, corner + size], axis=1).astype(np.int64)


def crop(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """``image[y0:y1, x0:x1]`` for integer edges ``box``, zeros where the box leaves the image."""
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = image.shape[:2]
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        return image[y0:y1, x0:x1]
    out = np.zeros((y1 - y0, x1 - x0, *image.shape[2:]), image.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out
