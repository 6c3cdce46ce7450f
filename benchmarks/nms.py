#!/usr/bin/env python3
"""Non-maximum suppression on 20,000 boxes: the plain greedy loop ("before") against ``runtime.faces.boxes.nms``.

    python benchmarks/nms.py [--boxes 20000] [--faces 6] [--per-face 300] [--repeat 5]

The boxes look like MTCNN's P-Net proposals on a 12-megapixel photo: most spread at random
over 4000 x 3000 (squares of side 12..200 px, log-uniform as a pyramid's scales, slightly
stretched by regression), the rest in dense clusters around a few faces (``--faces`` of
24..200 px, ``--per-face`` windows each, jittered by 10% in position and 15% in size).
Scores are float32, as P-Net's. For each of the detector's settings (IoU 0.5 and 0.7, over
the smaller 0.7) it checks that both give the same indices, then prints the time of one run
of the loop and the best of ``--repeat`` of ``nms``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.faces import boxes as bx  # noqa: E402 - after the path set-up


def nms_before(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "iou") -> np.ndarray:
    """The loop ``nms`` was before: one kept box at a time, vectorised over the rest."""
    order, area, keep = np.argsort(-scores, kind="stable"), bx.areas(boxes), []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        inter = bx.intersections(boxes[best], boxes[rest])
        base = area[best] + area[rest] - inter if mode == "iou" else np.minimum(area[best], area[rest])
        order = rest[inter <= threshold * base]
    return np.array(keep, dtype=np.int64)


def proposals(n: int, faces: int, per_face: int, seed: int = 0, width: int = 4000,
              height: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """``n`` boxes ``[n, 4]`` and scores: ``faces * per_face`` clustered, the rest spread over the photo."""
    rng = np.random.default_rng(seed)
    spread = n - faces * per_face
    side = np.exp(rng.uniform(np.log(12), np.log(200), spread))
    corner = rng.uniform(0, 1, (spread, 2)) * [width, height] - side[:, None] / 2
    boxes = [np.concatenate([corner, corner + side[:, None] * rng.uniform(0.9, 1.1, (spread, 2))], axis=1)]
    for _ in range(faces):  # a face and P-Net's windows around it, from several pyramid levels
        size = np.exp(rng.uniform(np.log(24), np.log(200)))
        centre = rng.uniform(0, 1, 2) * [width, height]
        s = size * np.exp(rng.normal(0, 0.15, per_face))
        c = centre + rng.normal(0, 0.1, (per_face, 2)) * size
        boxes.append(np.concatenate([c - s[:, None] / 2, c + s[:, None] / 2], axis=1))
    return np.concatenate(boxes), rng.uniform(0.6, 1, n).astype(np.float32)


def best_time(fn, repeat: int) -> tuple[float, np.ndarray]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=20_000)
    parser.add_argument("--faces", type=int, default=6, help="clusters of windows around a face")
    parser.add_argument("--per-face", type=int, default=300, help="windows in each cluster")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    boxes, scores = proposals(args.boxes, args.faces, args.per_face)
    print(f"{len(boxes)} boxes over 4000 x 3000 ({args.faces} clusters of {args.per_face}), "
          f"best of {args.repeat} (before: 1 run)")
    for threshold, mode in [(0.5, "iou"), (0.7, "iou"), (0.7, "min")]:
        before, want = best_time(lambda: nms_before(boxes, scores, threshold, mode), 1)
        after, got = best_time(lambda: bx.nms(boxes, scores, threshold, mode), args.repeat)
        assert np.array_equal(got, want), (threshold, mode)
        print(f"  {mode} {threshold}: kept {len(got):>6}   before {before:7.3f} s   after {after:7.4f} s   "
              f"{before / after:6.0f}x")


if __name__ == "__main__":
    main()
