"""``cvdvae run --ray`` against plain ``cvdvae run`` on the same inputs: the cost of Ray Data.

    python benchmarks/ray_run.py --json benchmarks/results/cpu-2core-amd-epyc-ray-run.json

The demo model (8x8 -> 32x32, OpenVINO) on 200 and 1,000 synthetic LR faces at n = 4, each command run
as a user runs it (its own process, ``--quiet``), best of REPEATS. Two Ray setups:

- ``local``: ``--ray`` alone, so the command starts a Ray on this machine and stops it after;
- ``cluster``: a Ray already running here (``ray start --head``), joined with ``--ray-address``,
  as on a cluster, where Ray is up before the job.

From the wall times at two input counts, the fixed cost (process start, model load, Ray and its
actor starting) and the marginal cost per sample are separated: ``fixed + samples / rate``.
The overhead of Ray is judged on the marginal rate, which is what a long job sees, and the
fixed cost is reported beside it, with what ``ray start --head`` alone takes (the part of a
local run's fixed cost that is Ray starting). Every Ray run's files are compared with plain run's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import environment, today  # noqa: E402

N, COUNTS, REPEATS = 4, (200, 1000), 3


def write_faces(folder: Path, count: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(count):
        pixels = np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"face{i:04d}.png")


def timed_run(model: Path, inputs: Path, out: Path, *flags: str) -> float:
    command = [sys.executable, "-m", "runtime.cli.run", str(model), "--input", str(inputs), "--out", str(out),
               "--n", str(N), "--quiet", *flags]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.glob("*.png")}


def fit(walls: dict[int, float]) -> dict[str, float]:
    """``fixed + samples / rate`` through the two input counts."""
    (a, wall_a), (b, wall_b) = sorted(walls.items())
    per_sample = (wall_b - wall_a) / ((b - a) * N)
    return {"fixed_s": round(wall_a - a * N * per_sample, 2), "marginal_samples_per_s": round(1 / per_sample, 1)}


def measure(model: Path, work: Path, name: str, flags: tuple[str, ...], reference: dict[int, dict]) -> dict:
    walls: dict[int, float] = {}
    for count in COUNTS:
        best = float("inf")
        for repeat in range(REPEATS):
            out = work / f"{name}-{count}-{repeat}"
            best = min(best, timed_run(model, work / f"in-{count}", out, *flags))
            if reference.get(count) is None:
                reference[count] = outputs(out)
            elif outputs(out) != reference[count]:
                raise SystemExit(f"{name}: the files of {count} inputs differ from plain run's")
        walls[count] = round(best, 2)
        print(f"{name}: {count} inputs x n = {N}: {best:.2f} s ({count * N / best:.1f} samples/s)", file=sys.stderr)
    return {"wall_s": walls, **fit(walls)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    from runtime.cli.demo import demo_engine

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = demo_engine(work / "engine")
        for count in COUNTS:
            write_faces(work / f"in-{count}", count)
        reference: dict[int, dict] = {}
        rows = {"plain": measure(model, work, "plain", (), reference),
                "ray_local": measure(model, work, "ray-local", ("--ray",), reference)}
        ray = [str(Path(sys.executable).parent / "ray")]
        port = "6391"
        start = time.perf_counter()
        subprocess.run([*ray, "start", "--head", "--num-cpus", "2", "--port", port, "--include-dashboard", "false",
                        "--disable-usage-stats"], check=True, capture_output=True, env={**os.environ})
        ray_start_s = round(time.perf_counter() - start, 2)
        try:
            rows["ray_cluster"] = measure(model, work, "ray-cluster", ("--ray", "--ray-address", f"127.0.0.1:{port}"),
                                          reference)
        finally:
            subprocess.run([*ray, "stop", "--force"], capture_output=True)
    plain_rate = rows["plain"]["marginal_samples_per_s"]
    for name in ("ray_local", "ray_cluster"):
        rows[name]["marginal_overhead"] = round(plain_rate / rows[name]["marginal_samples_per_s"] - 1, 3)
    result = {"benchmark": "ray_run", "n": N, "inputs": list(COUNTS), "repeats": REPEATS, "model": "demo (tiny-x4)",
              "date": today(),
              "machine": environment(threads=os.cpu_count() or 1), "ray_start_head_s": ray_start_s, "rows": rows}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
