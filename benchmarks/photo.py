#!/usr/bin/env python3
"""Where the time of ``cvdvae run --faces`` goes: detection, alignment and paste-back beside sampling.

    python benchmarks/photo.py --preset ffhq256-x4 --n 8 --json benchmarks/results/mine-photo.json

Photos are made from scikit-image's astronaut (one face): 1024 x 1024 and, with
``--megapixels 12``, a 4000 x 3000 one at 4x (a 192-megapixel output, for the memory peak).
Each photo runs in its own process through ``Pipeline.detect_faces`` / ``sample_faces`` and
``runtime.faces.photos.write_photo`` (what ``cvdvae run --faces`` calls), on the backend
``auto`` picks, and reports its stage timings and peak RSS. The model is exported with seeded random weights (or ``--engine-dir``): speed does not
depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from latency import export_for  # noqa: E402 - after the path set-up
from machine import environment, today  # noqa: E402

AROUND_SAMPLING = ("detect", "align", "paste")  # the work --faces adds around the model


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


def run_case(spec: dict) -> dict:
    """One photo, in this process: the stage timings of two runs (the first warms up) and the peak RSS."""
    from runtime.faces.photos import write_photo
    from runtime.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(spec["engine_dir"])
    photo = Path(spec["photo"])
    runs = []
    for repeat in range(spec["repeats"]):
        out = Path(spec["out"]) / str(repeat)
        out.mkdir(parents=True, exist_ok=True)
        found = pipe.detect_faces(photo)
        result = pipe.sample_faces(found, 0, np.full(spec["n"], 0.8, np.float32))
        for path in write_photo(result, out, photo.stem, True, pipe.shape.scale):
            path.unlink()  # keep the disk free: 192-megapixel PNGs
        runs.append({k: round(v, 4) for k, v in result.timings.items()})
    last = runs[-1]
    around = sum(last[k] for k in AROUND_SAMPLING)
    return {"photo": spec["name"], "size": list(result.size), "faces": len(result.faces),
            "modes": [f.mode for f in result.faces], "n": spec["n"], "backend": pipe.backend.name,
            "timings_s": runs, "around_sampling_s": round(around, 4),
            "around_over_sampling": round(around / last["sample"], 4),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="ffhq256-x4")
    p.add_argument("--engine-dir", type=Path, help="reuse this cvdvae-export folder instead of exporting")
    p.add_argument("--demo", action="store_true", help="the built-in tiny-x4 model (smoke tests)")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2, help="runs per photo (the last one is reported)")
    p.add_argument("--megapixels", type=int, choices=(0, 12), default=0, help="also a 12-megapixel photo")
    p.add_argument("--json", type=Path)
    p.add_argument("--case", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case.read_text()))))
        return 0
    with tempfile.TemporaryDirectory(prefix="cvdvae-photo-") as tmp:
        work = Path(tmp)
        engine_dir = args.engine_dir or export_for(work, demo=args.demo, preset=args.preset)
        cases = [("1024x1024", 1024, 1024)] + ([("4000x3000", 4000, 3000)] if args.megapixels else [])
        rows = []
        for name, width, height in cases:
            photo = work / f"{name}.jpg"
            make_photo(photo, width, height)
            spec = {"name": name, "photo": str(photo), "engine_dir": str(engine_dir), "n": args.n,
                    "repeats": args.repeats if width * height <= 2**20 else 1, "out": str(work / f"out-{name}")}
            (work / "spec.json").write_text(json.dumps(spec))
            proc = subprocess.run([sys.executable, __file__, "--case", str(work / "spec.json")], cwd=REPO,
                                  stdout=subprocess.PIPE, text=True)
            if proc.returncode:
                raise SystemExit(f"the {name} case failed (exit {proc.returncode}; its error is above)")
            rows.append(json.loads(proc.stdout.splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr)
        result = {"date": today(),
                  "environment": environment(os.cpu_count()), "model": args.preset if not args.demo else "tiny-x4",
                  "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
