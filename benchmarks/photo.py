#!/usr/bin/env python3
"""Where the time of ``cvdvae run --faces`` goes: everything around sampling, writing included.

    python benchmarks/photo.py --engine-dir engines/x4-fp32 --megapixels 1 12 24 --json benchmarks/results/mine-photo.json
    python benchmarks/photo.py --stand-in-ms 20 --megapixels 1 12 --json ...   # no model: a GPU-side figure

Photos are made from scikit-image's astronaut (one face), 1, 12 or 24 megapixels, saved as JPEG.
Each photo runs in its own process through ``Pipeline.detect_faces`` / ``sample_faces`` and
``runtime.faces.photos.write_photo`` (what ``cvdvae run --faces`` calls) and reports its stage
timings, its wall time and its peak RSS. "Around sampling" is the wall time of all of it but the
engine's calls (the ``sample`` stage): reading, detection, alignment, the background's
enlargement, paste-back, encoding and writing every file.

``--stand-in-ms MS`` replaces the engine with a stand-in that sleeps MS milliseconds per face
sample and returns the face's input enlarged: what the CPU side sustains when sampling costs
that much (a GPU), in photos per second. Without it the model is exported with seeded random
weights (or ``--engine-dir``): speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from latency import export_for  # noqa: E402 - after the path set-up
from machine import environment, today, vector_flags  # noqa: E402

SIZES = {1: (1024, 1024), 12: (4000, 3000), 24: (6000, 4000)}  # megapixels -> (width, height)
PHOTO_STAGES = ("enlarge", "paste", "encode", "write_photos")  # the whole photos' own work


def codecs() -> dict:
    from PIL import __version__, features

    return {"pillow": __version__, "libjpeg-turbo": features.version("jpg"), "zlib": features.version("zlib"),
            "webp": features.version("webp")}


def astronaut() -> np.ndarray:
    import skimage
    from PIL import Image

    return np.asarray(Image.open(Path(skimage.__file__).parent / "data" / "astronaut.png").convert("RGB"))


def make_photo(path: Path, width: int, height: int) -> None:
    """The astronaut scaled to the photo's height, mirrored out to its width, saved as a JPEG."""
    from PIL import Image

    face = np.asarray(Image.fromarray(astronaut()).resize((height, height), Image.LANCZOS))
    extra = width - height
    photo = np.pad(face, ((0, 0), (extra // 2, extra - extra // 2), (0, 0)), mode="reflect") if extra else face
    Image.fromarray(photo).save(path, quality=95)


class StandInBackend:
    """An engine of fixed cost: ``seconds`` per face sample slept (the CPU stays free, as with a
    GPU), and each sample the face's input enlarged (nearest), a level brighter per sample."""

    name, precision, provider, note, cuda_graphs = "stand-in", "fp32", None, None, None
    rows_independent, fp32_groups = True, ()

    def __init__(self, seconds: float, scale: int, max_n: int = 64):
        from runtime.timings import Timings

        self.seconds, self.scale, self.max_batch, self.max_n, self.timings = seconds, scale, 16, max_n, Timings()

    def sample_rows(self, lr, seeds, first_sample, temperature):
        from runtime.backends.interface import sampled

        batch, n = temperature.shape
        time.sleep(self.seconds * batch * n)
        enlarged = lr.repeat(self.scale, axis=2).repeat(self.scale, axis=3) / 255
        steps = (first_sample + np.arange(n, dtype=np.float32)) / 255
        return sampled(np.clip(enlarged[:, None] + steps[None, :, None, None, None], 0, 1).astype(np.float32))

    def sample(self, lr, seed, first_sample, temperature):
        rows = np.broadcast_to(np.asarray(temperature, np.float32), (len(lr), len(temperature)))
        return self.sample_rows(lr, [seed] * len(lr), first_sample, rows)


def facexlib_paste(photo: np.ndarray, faces: list[tuple[np.ndarray, np.ndarray]], factor: int, path: Path) -> None:
    """One whole photo made as facexlib 0.3.0's ``FaceRestoreHelper.paste_faces_to_input_image``
    does without a parsing model (``use_parse=False``), step for step in OpenCV, and written by
    ``cv2.imwrite`` in ``path``'s format: ``faces`` holds (sample HWC uint8 RGB, 2x3 map from
    sample pixels to output pixels). facexlib itself needs torchvision, whose wheels pin a
    PyTorch other than ours, so its steps are copied here (benchmark only)."""
    import cv2

    h, w = photo.shape[:2]
    h_up, w_up = int(h * factor), int(w * factor)
    upsample_img = cv2.resize(photo[..., ::-1], (w_up, h_up), interpolation=cv2.INTER_LANCZOS4)
    for restored_face, inverse_affine in faces:
        inv_restored = cv2.warpAffine(np.ascontiguousarray(restored_face[..., ::-1]), inverse_affine, (w_up, h_up))
        mask = np.ones(restored_face.shape[:2], dtype=np.float32)
        inv_mask = cv2.warpAffine(mask, inverse_affine, (w_up, h_up))
        inv_mask_erosion = cv2.erode(inv_mask, np.ones((int(2 * factor), int(2 * factor)), np.uint8))
        pasted_face = inv_mask_erosion[:, :, None] * inv_restored
        total_face_area = np.sum(inv_mask_erosion)
        w_edge = int(total_face_area ** 0.5) // 20
        erosion_radius = w_edge * 2
        inv_mask_center = cv2.erode(inv_mask_erosion, np.ones((erosion_radius, erosion_radius), np.uint8))
        blur_size = w_edge * 2
        inv_soft_mask = cv2.GaussianBlur(inv_mask_center, (blur_size + 1, blur_size + 1), 0)[:, :, None]
        upsample_img = inv_soft_mask * pasted_face + (1 - inv_soft_mask) * upsample_img
    cv2.imwrite(str(path), upsample_img.astype(np.uint8))


def run_facexlib(spec: dict) -> dict:
    """facexlib's paste-back on the same work: the same faces and stand-in samples, n whole photos."""
    from runtime.faces.paste import canvas_map, output_shape

    pipe = pipeline(spec)
    photo = Path(spec["photo"])
    found = pipe.detect_faces(photo)
    result = pipe.sample_faces(found, 0, np.full(spec["n"], 0.8, np.float32))
    factor = pipe.shape.scale
    to_output = canvas_map(result.photo.shape[:2], output_shape(result.photo.shape[:2], factor))
    maps = [(to_output @ face.square.to_photo(pipe.shape.hr_size))[:2] for face in result.faces]
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for k in range(spec["n"]):
        path = out / f"facexlib_{k:02d}{photo.suffix}"
        facexlib_paste(result.photo, [(face.samples[k], m) for face, m in zip(result.faces, maps)], factor, path)
        path.unlink()
    seconds = time.perf_counter() - start
    return {"photo": spec["name"], "n": spec["n"], "facexlib_steps_s": round(seconds, 4),
            "per_output_photo_s": round(seconds / spec["n"], 4),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def png_levels(photo: Path, levels: tuple[int, ...] = (1, 3, 6)) -> list[dict]:
    """The photo enlarged 4x (the background every whole photo shares) deflated band by band at each
    zlib level, on every core: seconds, megabytes and output megapixels per second."""
    from concurrent.futures import ThreadPoolExecutor

    from runtime.faces.paste import upscale
    from runtime.images.bands import BandCodec
    from runtime.images.decode import decode_image

    canvas = upscale(decode_image(photo, 10**9).pixels, 4)
    rows = []
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        for level in levels:
            codec = BandCodec("png", canvas.shape[0], canvas.shape[1], 3, level=level)
            start = time.perf_counter()
            bands = list(pool.map(lambda i: codec.band(canvas[codec.rows(i)]), range(codec.count)))
            seconds = time.perf_counter() - start
            size = sum(len(piece) for piece in codec.file(bands))
            rows.append({"level": level, "seconds": round(seconds, 3), "megabytes": round(size / 1e6, 1),
                         "mp_per_s": round(canvas.shape[0] * canvas.shape[1] / 1e6 / seconds, 1)})
    return rows


def pipeline(spec: dict):
    from runtime.model_files import ModelShape
    from runtime.pipeline import Pipeline

    if spec["stand_in_ms"] is None:
        return Pipeline.from_pretrained(spec["engine_dir"])
    return Pipeline(StandInBackend(spec["stand_in_ms"] / 1000, 4), ModelShape(True, 64, 256, 4), "stand-in")


def write_options(spec: dict) -> dict:
    """``--write`` as ``write_photo``'s keyword arguments (``photo_format``: [name, quality])."""
    from runtime.images.photo_format import PhotoFormat

    options = dict(spec.get("write", {}))
    if "photo_format" in options:
        options["photo_format"] = PhotoFormat(*options["photo_format"])
    return options


def run_case(spec: dict) -> dict:
    """One photo, in this process: the stage timings of each run (the first warms up) and the peak RSS."""
    from runtime.faces.photos import write_photo

    pipe = pipeline(spec)
    photo = Path(spec["photo"])
    runs = []
    for repeat in range(spec["repeats"]):
        out = Path(spec["out"]) / str(repeat)
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        found = pipe.detect_faces(photo)
        result = pipe.sample_faces(found, 0, np.full(spec["n"], 0.8, np.float32))
        written = write_photo(result, out, photo.stem, True, pipe.shape.scale, **write_options(spec))
        wall = time.perf_counter() - start
        size = sum(path.stat().st_size for path in written)
        for path in written:
            path.unlink()  # keep the disk free: 192-megapixel photos
        timings = {k: round(v, 4) for k, v in result.timings.items()}
        timings["untimed"] = round(wall - sum(result.timings.values()), 4)
        runs.append({"wall_s": round(wall, 4), "timings_s": timings, "written_mb": round(size / 1e6, 1)})
    last = runs[-1]
    around = last["wall_s"] - last["timings_s"]["sample"]
    photos = sum(last["timings_s"].get(k, 0.0) for k in PHOTO_STAGES)
    out_mp = np.prod(result.photo.shape[:2]) * result.upscale ** 2 / 1e6
    return {"photo": spec["name"], "size": list(result.size), "faces": len(result.faces),
            "modes": [f.mode for f in result.faces], "n": spec["n"], "backend": pipe.backend.name,
            "output_megapixels": round(float(out_mp), 1), "runs": runs,
            "around_sampling_s": round(around, 4),
            "around_over_sampling": round(around / last["timings_s"]["sample"], 4),
            "whole_photos_s": round(photos, 4),
            "whole_photos_mp_per_s": round(float(out_mp) * spec["n"] / photos, 1) if photos else None,
            "photos_per_s": round(1 / last["wall_s"], 3),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="ffhq256-x4")
    p.add_argument("--engine-dir", type=Path, help="reuse this cvdvae-export folder instead of exporting")
    p.add_argument("--demo", action="store_true", help="the built-in tiny-x4 model (smoke tests)")
    p.add_argument("--stand-in-ms", type=float, help="no model: a stand-in engine of this cost per face sample")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2, help="runs per photo (the last one is reported)")
    p.add_argument("--megapixels", type=int, nargs="+", choices=sorted(SIZES), default=[1])
    p.add_argument("--write", type=json.loads, default={}, help="write_photo's keyword arguments, as JSON "
                                                                   "(photo_format: [name, quality])")
    p.add_argument("--png-levels", action="store_true", help="only the 4x background deflated at zlib levels 1, "
                                                            "3 and 6 (size against speed)")
    p.add_argument("--facexlib", action="store_true", help="facexlib's paste-back steps instead (OpenCV; needs "
                                                          "--stand-in-ms)")
    p.add_argument("--json", type=Path)
    p.add_argument("--case", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        spec = json.loads(args.case.read_text())
        if spec.get("png_levels"):
            print(json.dumps({"photo": spec["name"], "png_levels": png_levels(Path(spec["photo"]))}))
        else:
            print(json.dumps(run_facexlib(spec) if spec.get("facexlib") else run_case(spec)))
        return 0
    with tempfile.TemporaryDirectory(prefix="cvdvae-photo-", dir=os.environ.get("CVDVAE_BENCH_TMP")) as tmp:
        work = Path(tmp)
        engine_dir = None
        if args.stand_in_ms is None and not args.png_levels:
            engine_dir = args.engine_dir or export_for(work, demo=args.demo, preset=args.preset)
        rows = []
        for megapixels in args.megapixels:
            width, height = SIZES[megapixels]
            name = f"{width}x{height}"
            photo = work / f"{name}.jpg"
            make_photo(photo, width, height)
            spec = {"name": name, "photo": str(photo), "engine_dir": str(engine_dir), "n": args.n,
                    "stand_in_ms": args.stand_in_ms, "write": args.write, "facexlib": args.facexlib,
                    "png_levels": args.png_levels,
                    "repeats": args.repeats if megapixels <= 1 else 1, "out": str(work / f"out-{name}")}
            (work / "spec.json").write_text(json.dumps(spec))
            proc = subprocess.run([sys.executable, __file__, "--case", str(work / "spec.json")], cwd=REPO,
                                  stdout=subprocess.PIPE, text=True)
            if proc.returncode:
                raise SystemExit(f"the {name} case failed (exit {proc.returncode}; its error is above)")
            rows.append(json.loads(proc.stdout.splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr)
        model = ("tiny-x4" if args.demo else args.preset) if args.stand_in_ms is None else \
            f"stand-in engine, {args.stand_in_ms:g} ms per face sample (x4 shapes)"
        if args.png_levels:
            model = "none: the 4x background only"
        elif args.stand_in_ms is None and args.engine_dir is not None:
            model = f"{args.preset} export in {args.engine_dir}"
        if args.facexlib:
            model += "; facexlib 0.3.0's paste_faces_to_input_image steps (use_parse=False) run in OpenCV, not ours"
        result = {"date": today(),
                  "environment": {**environment(os.cpu_count()), "cpu_flags": vector_flags(), **codecs()},
                  "model": model, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
