#!/usr/bin/env python3
"""Test files run round after round while another process keeps every core busy: do they flake?

    python benchmarks/flake_soak.py tests/test_serve.py tests/test_cluster.py --rounds 10 \
        --json benchmarks/results/<machine>-serve-cluster-soak.json

The burner is one process at normal priority multiplying float32 matrices on as many threads as
the machine has cores (numpy's BLAS lets go of the GIL), started before the first round and
stopped after the last. Each round is the suite's own command on those files (pytest -n 2, as
scripts/test.sh runs it), with a time limit; the results record every round's counts, its failed
test ids and their first error lines, its wall time and the burner's pace through it (a burner
that stopped shows), the burner's work done, and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import environment, today, vector_flags  # noqa: E402 - after the path set-up

BURNER = """
import sys, time
import numpy as np
a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
done, start = 0, time.perf_counter()
while True:
    a = np.tanh(a @ a)  # bounded values, so the work stays the same
    done += 1
    if done % 50 == 0:
        print(done, time.perf_counter() - start, flush=True)
"""
COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)")


class Burner:
    """The burner process, and its progress read as it goes: a pipe nobody read would fill, and
    the burner would then stop at its next line, leaving later rounds on an idle machine."""

    def __init__(self, threads: int):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
               "MKL_NUM_THREADS": str(threads)}
        self.process = subprocess.Popen([sys.executable, "-c", BURNER], stdout=subprocess.PIPE, text=True, env=env)
        self.progress = (0, 0.0)  # (matmuls done, seconds), from its last line
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            fields = line.split()
            if len(fields) == 2:  # a line cut short as it stops is not progress
                self.progress = (int(fields[0]), float(fields[1]))

    def stop(self) -> dict:
        """Stops it; its work done says it kept working."""
        self.process.terminate()
        self.process.wait(timeout=30)
        self.reader.join(timeout=30)
        return {"matmuls": self.progress[0], "seconds": round(self.progress[1], 1)}


def one_round(files: list[str], workers: int, limit_s: int) -> dict:
    command = [sys.executable, "-m", "pytest", "-q", "-n", str(workers), "-p", "no:cacheprovider", *files]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=limit_s)
        output, status = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        output, status = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) \
            else (err.stdout or ""), "timed out"
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in COUNTS.findall(summary)}
    failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.M)))
    return {"status": status, "wall_s": round(time.perf_counter() - start, 1), "counts": counts, "failed": failed,
            "why": [line[:400] for line in re.findall(r"^E +.*$", output, re.M)][:20], "summary": summary}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="test files, as pytest takes them")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (scripts/test.sh: 2)")
    p.add_argument("--burner-threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--limit", type=int, default=1200, help="seconds a round may take")
    p.add_argument("--json", type=Path, help="write the results here (after every round)")
    args = p.parse_args(argv)
    results = {"date": today(), "environment": environment(args.workers), "cpu_flags": vector_flags(),
               "files": args.files, "workers": args.workers, "burner_threads": args.burner_threads,
               "burner": "numpy float32 1024x1024 matmuls at normal priority", "rounds": []}

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")

    burner = Burner(args.burner_threads)
    try:
        for number in range(1, args.rounds + 1):
            before = burner.progress
            results["rounds"].append({"round": number, "load_average": os.getloadavg()[0],
                                      **one_round(args.files, args.workers, args.limit)})
            done, seconds = (now - then for now, then in zip(burner.progress, before))
            results["rounds"][-1]["burner_matmuls_per_s"] = round(done / seconds, 1) if seconds else 0.0
            print(json.dumps(results["rounds"][-1]), flush=True)
            save()
    finally:
        results["burner_work"] = burner.stop()
    rounds = results["rounds"]
    results["clean_rounds"] = sum(r["status"] == 0 for r in rounds)
    results["failures"] = sum(r["counts"].get("failed", 0) + r["counts"].get("error", 0) for r in rounds)
    save()
    print(f"{results['clean_rounds']}/{len(rounds)} clean rounds, {results['failures']} failures")
    return 0 if results["clean_rounds"] == len(rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
