#!/usr/bin/env python3
"""Peak memory of ``cvdvae run --faces`` per photo: one face, 100 faces, a 12 MP photo.

    python benchmarks/photo_memory.py --json benchmarks/results/mine-photo-memory.json

Each case runs in its own process (``Pipeline.faces`` then ``write_photo``, as ``run --faces``
does) on the demo model (or ``--engine-dir``), its peak RSS read from ``getrusage`` and set
against the process's RSS once the model is loaded and the output's size: the memory a photo
adds, in bytes per output pixel. Photos are built from scikit-image's astronaut portrait.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from latency import export_for  # noqa: E402 - after the path set-up
from machine import environment, today  # noqa: E402

CASES = {  # name: (photo width, height, faces across, faces down)
    "one face (512x512)": (512, 512, 1, 1),
    "100 faces (2000x2000)": (2000, 2000, 10, 10),
    "12 MP (4000x3000, 2 faces)": (4000, 3000, 2, 1),
}

CHILD = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
import numpy as np, skimage
from PIL import Image
from runtime.pipeline import Pipeline
from runtime.faces.photos import write_photo

engine, width, height, across, down, n = sys.argv[1], *map(int, sys.argv[2:7])
tile = Image.open(Path(skimage.__file__).parent / "data" / "astronaut.png").convert("RGB")
canvas = Image.new("RGB", (width, height), (90, 120, 150))
side = min(width // across, height // down)
for k in range(across * down):
    canvas.paste(tile.resize((side, side)), ((k % across) * (width // across), (k // across) * (height // down)))
pipe = Pipeline.from_pretrained(engine)
pipe.detector  # loaded before the baseline
photo = np.asarray(canvas)
del canvas
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
result = pipe.faces(photo, n=n, seed=0, max_faces=200)
with tempfile.TemporaryDirectory() as out:
    write_photo(result, Path(out), "photo", False, None)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
h, w = round(height * result.upscale), round(width * result.upscale)
print(json.dumps({"faces": len(result.faces), "output": f"{w}x{h}", "output_mp": round(w * h / 1e6, 1),
                  "baseline_rss_mib": round(baseline / 1024), "peak_rss_mib": round(peak / 1024),
                  "added_bytes_per_output_pixel": round((peak - baseline) * 1024 / (w * h), 2),
                  "seconds": round(time.perf_counter() - start, 1)}))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine-dir", type=Path, help="an export folder (default: export the demo model)")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="cvdvae-photo-memory-") as tmp:
        engine = args.engine_dir or export_for(Path(tmp), demo=True)
        for name, (width, height, across, down) in CASES.items():
            run = subprocess.run([sys.executable, "-c", CHILD, str(engine), str(width), str(height), str(across),
                                  str(down), str(args.n)], capture_output=True, text=True, cwd=REPO)
            if run.returncode:
                print(run.stderr[-2000:], file=sys.stderr)
                return 1
            rows[name] = json.loads(run.stdout.strip().splitlines()[-1])
            print(name, rows[name], file=sys.stderr)
    result = {"date": today(),
              "environment": environment(os.cpu_count()), "model": str(args.engine_dir or "demo (tiny-x4)"),
              "n": args.n, "cases": rows}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
