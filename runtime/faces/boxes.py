"""Box arithmetic for face detection, in numpy: non-maximum suppression, squaring, regression, crops.

A box is ``(x0, y0, x1, y1)``: the edges of a region, so its width is ``x1 - x0`` (no MATLAB
``+ 1``). Arrays of boxes are ``[K, 4]`` float64; ``crop`` takes integer edges, in the frame where
pixel (row r, column c) spans ``[c, c + 1] x [r, r + 1]``.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


def areas(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def intersections(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Area shared by ``box`` ``(4,)`` and each of ``boxes`` ``[K, 4]``."""
    w = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    h = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


MAX_COORDINATE = 1e150  # below it no width, area or sum of areas overflows to inf (and inf - inf to nan)
PAIRS_PER_CHUNK = 1 << 18  # candidate pairs tested at once: bounds the temporary arrays (2 MB each)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "iou") -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first.

    Boxes are visited best first (equal scores: lower index first); one is dropped when its overlap
    with a box already kept exceeds ``threshold``: ``intersection > threshold * base``, where the base
    is the union (``"iou"``) or the smaller area (``"min"``, MTCNN's last stage: also drops a small
    box inside a big one).

    Comparing each kept box with all the others costs O(K^2) when most are kept (20,000 P-Net
    proposals over a photo: seconds). But with a threshold >= 0 only boxes whose interiors overlap
    can drop one another, and those pairs are few (``candidate_pairs`` finds them): the overlaps are
    computed for them only, chunk by chunk, with the plain algorithm's arithmetic term for term, and
    the greedy pass walks the sparse list of "would drop" pairs. The result is the same to the last
    index; time and memory grow with K log K and the number of overlapping pairs.
    """
    if mode not in ("iou", "min"):
        raise ValueError(f"mode must be 'iou' or 'min', not {mode!r}")
    if not 0 <= threshold < np.inf:
        raise ValueError(f"threshold must be finite and >= 0, not {threshold!r}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not (np.abs(boxes) < MAX_COORDINATE).all():  # also refuses nan
        raise ValueError(f"box coordinates must be finite and below {MAX_COORDINATE:g} in size")
    order = np.argsort(-scores, kind="stable")
    boxes = boxes[order]  # from here on a box's index is its rank: of two boxes, the lower index is the better
    area, (x0, y0, x1, y1) = areas(boxes), boxes.T.copy()  # columns: faster to gather

    better, worse = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for a, b in candidate_pairs(boxes):
        # `intersections`, term for term (w > 0 for every candidate, so only h needs the clip)
        w = np.minimum(x1[a], x1[b]) - np.maximum(x0[a], x0[b])
        h = np.minimum(y1[a], y1[b]) - np.maximum(y0[a], y0[b])
        inter = w * np.maximum(h, 0)
        base = area[a] + area[b] - inter if mode == "iou" else np.minimum(area[a], area[b])
        drops = inter > threshold * base  # multiplied out: no 0/0 for empty boxes
        better.append(np.minimum(a[drops], b[drops]))
        worse.append(np.maximum(a[drops], b[drops]))
    better, worse = np.concatenate(better), np.concatenate(worse)

    dropped = np.zeros(len(boxes), bool)
    # A box that no other would drop is kept, and drops all its pairs. In a cluster this settles most
    # pairs at once, leaving few to sort for the loop (sorting them all costs as much as all the rest).
    sure = np.ones(len(boxes), bool)
    sure[worse] = False
    dropped[worse[sure[better]]] = True
    undecided = ~dropped[better] & ~dropped[worse]
    better, worse = better[undecided], worse[undecided]
    # The rest, best first: a box still standing when its turn comes is kept, and drops its pairs.
    by_better = np.argsort(better, kind="stable")
    better, worse = better[by_better], worse[by_better]
    starts = np.flatnonzero(np.diff(better, prepend=-1))
    for box, start, end in zip(better[starts].tolist(), starts.tolist(), [*starts[1:].tolist(), len(better)]):
        if not dropped[box]:
            dropped[worse[start:end]] = True
    return order[~dropped].astype(np.int64)


def candidate_pairs(boxes: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Index arrays ``(a, b)`` of box pairs that overlap in x: every pair whose interiors overlap, and few others.

    Yielded in chunks of about ``PAIRS_PER_CHUNK``. A sweep along x over the whole photo would pair
    boxes a photo's height apart; so the photo is cut into horizontal strips as tall as the mean box,
    and each box is listed in every strip it touches (at most 3 listings per box on average). Within
    a strip, sorted by left edge, a listing meets only the ones after it that start left of its right
    edge: a run, found by binary search. Two overlapping boxes are both listed in the strip where the
    later of the two begins, and there their pair is taken: a listing whose box began in an earlier
    strip pairs only with the boxes that begin in this one (so a pair comes once).
    """
    x0, y0, x1, y1 = boxes.T
    ids = np.flatnonzero((x0 < x1) & (y0 < y1))  # an empty box overlaps nothing: never drops, never dropped
    if len(ids) < 2:
        return
    top, bottom = y0[ids].min(), y1[ids].max()
    # as tall as the mean box, but at most 2**40 strips: the int64 keys below then hold 4 million boxes
    strip = max((y1 - y0)[ids].mean(), (bottom - top) / 2**40)
    # first and last strip each box touches; floor is monotone, so a box beginning lower never gets an earlier one
    first = np.floor((y0[ids] - top) / strip).astype(np.int64)
    last = np.floor((y1[ids] - top) / strip).astype(np.int64)
    # x edges as ranks among all of them: compared exactly, and (strip, left edge) becomes one integer
    xs, rank = np.unique(np.concatenate([x0[ids], x1[ids]]), return_inverse=True)
    left, right = rank[:len(ids)], rank[len(ids):]

    n = last - first + 1  # one listing per (box, strip touched)
    row = np.repeat(first, n) + np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    key = row * len(xs) + np.repeat(left, n)
    sort = np.argsort(key)
    box, key, row = np.repeat(ids, n)[sort], key[sort], row[sort]
    end = np.searchsorted(key, row * len(xs) + np.repeat(right, n)[sort])  # same strip, left of the right edge

    # listing p pairs with the listings in (p, end): all of them if its box begins in this strip, else
    # only those whose box does (kept apart in `beginners`, where they too are a run)
    at = np.arange(len(box))
    begins = row == np.repeat(first, n)[sort]
    beginners = np.flatnonzero(begins)
    targets = np.concatenate([box, box[beginners]])
    lo = np.where(begins, at + 1, len(at) + np.searchsorted(beginners, at, side="right"))
    count = np.where(begins, end, len(at) + np.searchsorted(beginners, end)) - lo
    offset = np.cumsum(count) - count

    chunks = [*np.searchsorted(offset, np.arange(0, offset[-1] + count[-1], PAIRS_PER_CHUNK)).tolist(), len(at)]
    for p0, p1 in zip(chunks[:-1], chunks[1:]):
        c = count[p0:p1]
        run_start = np.repeat(lo[p0:p1] - (offset[p0:p1] - offset[p0]), c)  # pair i of the chunk: run_start + i
        yield np.repeat(box[p0:p1], c), targets[run_start + np.arange(len(run_start))]


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
