#!/usr/bin/env python3
"""How long `cvdvae` takes to start, and what the host adds to each sample.

    git -C . archive main | tar -x -C /tmp/main-tree       # the tree before a change
    python benchmarks/startup.py --model /tmp/x8 --before /tmp/main-tree --json benchmarks/results/mine-startup.json

(a) ``cvdvae --help`` and ``cvdvae run --help``: best of 5 wall seconds, and the peak RSS.
(b) ``cvdvae run MODEL --n 1`` as a whole process and to its first sample (the sample file's mtime),
    with the compiled-model cache emptied (cold) and kept (warm), beside the sampling time alone:
    one process opens the backend (its load split into compiling or importing) and samples twice
    (the first call, then the second), as often as the most repeated start: best against best.
(c) The host gap: seconds per sample through the backend (``runtime.sampling``, fresh noise each time)
    against bare infer calls of the same size on the backend's own compiled model, its noise made
    beforehand.
``--before`` measures another tree the same way (main's, for the figures before a change), the host
gap in rounds that alternate between the trees.

Every process runs alone (hold the CPU lock: several GiB each); each figure records its repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import environment, today  # noqa: E402 - after the path set-up

SEED, TEMPERATURE = 0, 0.8
FIRST_SAMPLE = "lr_s0_00.png"  # what `cvdvae run` names the first sample of lr.png
PARTS = ("help", "start", "gap")


def run_child(command: list[str], code: Path) -> dict:
    """Wall seconds, peak RSS (GiB) and output of one process, which must succeed; it runs in
    ``code``, whose packages come first on its path. The peak is GNU time's (``%M``): a child forked
    from this large process would report this process's size (Linux keeps the high-water mark
    across ``execve``), while one that time starts reports its own; None without GNU time."""
    # Bytecode kept as an installed package keeps it (pip compiles it at install).
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}, "PYTHONPATH": str(code)}
    gnu_time = shutil.which("time")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        wrapped = [gnu_time, "-f", "%M", "-o", rss.name, *command] if gnu_time else command
        launched_ns, start = time.time_ns(), time.perf_counter()
        proc = subprocess.run(wrapped, stdout=out, stderr=err, env=env, cwd=code)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
        peak_kib = rss.read().split()[-1] if gnu_time else None
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{stderr[-2000:]}")
    return {"wall_s": wall, "peak_rss_gib": int(peak_kib) / 2**20 if peak_kib else None, "stdout": stdout,
            "stderr": stderr, "launched_ns": launched_ns}


def cvdvae_command(code: Path) -> list[str]:
    """``cvdvae`` as the console script of ``code``'s pyproject.toml runs it."""
    module, function = tomllib.loads((code / "pyproject.toml").read_text())["project"]["scripts"]["cvdvae"].split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.argv[0] = 'cvdvae'; "
                                  f"sys.exit({function}())"]


def measure_help(repeats: int, code: Path) -> dict:
    results = {}
    for args in (["--help"], ["run", "--help"]):
        runs = [run_child(cvdvae_command(code) + args, code) for _ in range(repeats)]
        results["cvdvae " + " ".join(args)] = {"best_s": round(min(r["wall_s"] for r in runs), 3),
                                               "walls_s": rounded([r["wall_s"] for r in runs]),
                                               "peak_rss_gib": peak(runs)}
    return results


def peak(runs: list[dict]) -> float | None:
    peaks = [r["peak_rss_gib"] for r in runs if r["peak_rss_gib"] is not None]
    return round(max(peaks), 3) if peaks else None


def measure_start(model: Path, backend: str, runs_of: dict[str, int], code: Path) -> dict:
    """``cvdvae run MODEL --n 1`` as whole processes (``runs_of``: "cold", with the cache emptied
    first, "warm", or "no cache" for a tree without one), and the sampling alone (a worker process)."""
    with tempfile.TemporaryDirectory(prefix="cvdvae-startup-") as tmp:
        image = Path(tmp) / "lr.png"
        write_lr_image(model, image)
        command = cvdvae_command(code) + ["run", str(model), "--input", str(image), "--n", "1", "--seed", str(SEED),
                                      "--backend", backend, "--out", str(Path(tmp) / "out"), "--overwrite"]
        runs: dict[str, list] = {kind: [] for kind in runs_of}
        for kind, repeats in runs_of.items():
            for _ in range(repeats):
                if kind == "cold":
                    shutil.rmtree(model / "cache", ignore_errors=True)
                done = run_child(command, code)
                # Written before it is renamed into place: its mtime is when the sample was whole.
                first_sample = (Path(tmp) / "out" / FIRST_SAMPLE).stat().st_mtime_ns - done["launched_ns"]
                runs[kind].append({"wall_s": round(done["wall_s"], 3), "first_sample_s": round(first_sample / 1e9, 3),
                                   "peak_rss_gib": peak([done]),
                                   "notes": [line for line in done["stderr"].splitlines() if line.startswith("note:")]})
        # As many as the most repeated start, best against best: the machine's slower spells hit both alike.
        samplings = [worker(code, ["--worker", "sampling", "--model", str(model), "--backend", backend])
                     for _ in range(max(runs_of.values()))]
    sampling = {"runs": samplings, **{name: min(run[name] for run in samplings)
                                      for name in ("load_s", "first_call_s", "second_call_s")}}
    best = {kind: min(r["wall_s"] for r in done_runs) for kind, done_runs in runs.items() if done_runs}
    first = {kind: min(r["first_sample_s"] for r in done_runs) for kind, done_runs in runs.items() if done_runs}
    fastest, soonest = min(best.values()), min(first.values())
    return {"command": f"cvdvae run MODEL --n 1 --backend {backend}", "runs": runs, "best_s": best,
            "best_first_sample_s": first, "sampling_alone": sampling,
            "first_sample_beyond_first_call_s": round(soonest - sampling["first_call_s"], 3),
            "fastest_beyond_first_call_s": round(fastest - sampling["first_call_s"], 3),
            "fastest_beyond_second_call_s": round(fastest - sampling["second_call_s"], 3)}


def write_lr_image(model: Path, path: Path) -> None:
    from PIL import Image

    size = json.loads((model / "meta.json").read_text())["lr_size"]
    Image.fromarray(np.random.default_rng(SEED).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def worker(code: Path, args: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        proc = subprocess.run([sys.executable, __file__, *args, "--code", str(code), "--json", out.name], cwd=REPO,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"worker {args} failed:\n{proc.stderr[-3000:]}")
        return json.loads(Path(out.name).read_text())


def sampling_worker(model: Path, backend_name: str) -> dict:
    """One process: the backend opened (warm cache), then two calls of one sample."""
    from runtime.backends import open_backend
    from runtime.model_files import locate

    files = locate(model)
    start = time.perf_counter()
    backend = open_backend(files, backend_name)
    getattr(backend, "wait_ready", lambda: None)()  # a tree from before it was there opens at once
    load = time.perf_counter() - start
    lr = np.random.default_rng(SEED).integers(0, 256, (1, 3, files.lr_size, files.lr_size)).astype(np.float32)
    calls = []
    for first in range(2):
        start = time.perf_counter()
        backend.sample(lr, SEED, first, np.full(1, TEMPERATURE, np.float32))
        calls.append(time.perf_counter() - start)
    return {"backend": backend.name, "load_s": round(load, 3), "compile_s": round(getattr(backend.timings, "compile", 0), 3),
            "first_call_s": round(calls[0], 3), "second_call_s": round(calls[1], 3),
            "noise_s": round(backend.timings.noise, 3)}


def gap_worker(model: Path, n: int, repeats: int) -> dict:
    """Backend seconds per sample (``sample_images``, fresh noise each repeat) against the same compiled
    model's bare calls of the same sizes, interleaved."""
    from cvdvae.seeding import noise_numpy
    from runtime.backends.openvino import OpenVINOBackend
    from runtime.model_files import locate
    from runtime.sampling import sample_chunks, sample_images

    files = locate(model)
    backend = OpenVINOBackend(files)
    lr = np.random.default_rng(SEED).integers(0, 256, (1, 3, files.lr_size, files.lr_size)).astype(np.float32)
    temperature = np.full(n, TEMPERATURE, np.float32)
    chunks = sample_chunks(n, backend.max_n)
    bare_feeds = [{"lr": lr, "noise": noise_numpy(SEED, len(c), files.noise_dim, c.start)[None],
                   "temperature": temperature[None, c.start:c.stop]} for c in chunks]
    sample_images(backend, lr, 10_000, temperature)  # warm-up: the first call of a compiled model is slower
    through_backend, bare, noise = [], [], []
    for repeat in range(repeats):
        backend.timings.noise = 0.0
        start = time.perf_counter()
        sample_images(backend, lr, SEED + 1 + repeat, temperature)  # a seed not seen: its noise is made
        through_backend.append((time.perf_counter() - start) / n)
        noise.append(backend.timings.noise / n)
        start = time.perf_counter()
        for feeds in bare_feeds:
            backend.request.infer(feeds)
        bare.append((time.perf_counter() - start) / n)
    best, best_bare = min(through_backend), min(bare)
    return {"n": n, "calls": [len(c) for c in chunks], "repeats": repeats,
            "backend_s_per_sample": rounded(through_backend), "bare_s_per_sample": rounded(bare),
            "noise_s_per_sample": rounded(noise), "backend_best_s": round(best, 3), "bare_best_s": round(best_bare, 3),
            "gap_best": round(best / best_bare - 1, 4),
            "gap_median": round(statistics.median(through_backend) / statistics.median(bare) - 1, 4)}


def rounded(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]


def imported_from(code: Path) -> str:
    """Where a child process started as ``run_child`` starts them finds the ``runtime`` package."""
    return run_child([sys.executable, "-c", "import runtime; print(runtime.__file__)"], code)["stdout"].strip()


def code_revision(code: Path) -> str | None:
    proc = subprocess.run(["git", "-C", str(code), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(code), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (proc.stdout.strip() + (" (with changes)" if dirty else "")) if proc.returncode == 0 else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="an export folder (e.g. ffhq256-x8, fp32)")
    p.add_argument("--only", help=f"comma list of {', '.join(PARTS)} (default: all)")
    p.add_argument("--backends", default="openvino,onnxruntime", help="for the start-up runs")
    p.add_argument("--cold", type=int, default=2, help="cold start-up runs per backend")
    p.add_argument("--warm", type=int, default=3, help="warm start-up runs per backend")
    p.add_argument("--n", type=int, default=8, help="samples per image for the host gap")
    p.add_argument("--repeats", type=int, default=3, help="host-gap repeats (backend and bare, interleaved)")
    p.add_argument("--rounds", type=int, default=2, help="host-gap rounds, alternating the trees")
    p.add_argument("--code", type=Path, default=REPO, help="the tree whose runtime the workers import")
    p.add_argument("--before", type=Path, help="another tree (e.g. main's), measured the same way (start-up "
                                               "and host gap; every start there is cold)")
    p.add_argument("--note", help="recorded as is (e.g. which commit --before holds)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--worker", choices=("sampling", "gap"), help=argparse.SUPPRESS)
    p.add_argument("--backend", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        sys.path.insert(0, str(args.code.resolve()))
        result = (sampling_worker(args.model, args.backend) if args.worker == "sampling"
                  else gap_worker(args.model, args.n, args.repeats))
        args.json.write_text(json.dumps(result))
        return 0
    parts = args.only.split(",") if args.only else list(PARTS)
    trees = {"after": args.code, **({"before": args.before} if args.before else {})}
    from runtime.backends.cpu_features import cpu_flags

    results: dict = {"date": today(),
                     "environment": environment(os.cpu_count() or 1), "cpu_flags": sorted(cpu_flags() or []),
                     "model": str(args.model),
                     "meta": {k: json.loads((args.model / "meta.json").read_text()).get(k)
                              for k in ("scale", "hr_size", "lr_size", "precision", "onnx_sha256")},
                     "trees": {name: {"path": str(code), "revision": code_revision(code),
                                      "runtime_imported_from": imported_from(code)} for name, code in trees.items()},
                     "note": args.note, "load_average_before": os.getloadavg()}

    def save() -> None:
        results["load_average_after"] = os.getloadavg()
        if args.json:
            from cvdvae.fileio import write_bytes

            args.json.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(args.json, (json.dumps(results, indent=2) + "\n").encode())

    if "help" in parts:
        results["help"] = {name: measure_help(5, code) for name, code in trees.items()}
        print(json.dumps(results["help"], indent=1), flush=True)
        save()
    if "start" in parts:
        runs_of = {"after": {"cold": args.cold, "warm": args.warm}, "before": {"no cache": args.warm}}
        results["start"] = {name: {backend: measure_start(args.model, backend, runs_of[name], code)
                                   for backend in args.backends.split(",")} for name, code in trees.items()}
        print(json.dumps(results["start"], indent=1), flush=True)
        save()
    if "gap" in parts:
        results["gap"] = {name: [] for name in trees}
        for _ in range(args.rounds):  # alternating, so that a slower spell of the machine hits both
            for name, code in trees.items():
                results["gap"][name].append(worker(code, ["--worker", "gap", "--model", str(args.model), "--n",
                                                          str(args.n), "--repeats", str(args.repeats)]))
                print(name, json.dumps(results["gap"][name][-1]), flush=True)
                save()
        results["gap_summary"] = {name: gap_summary(rounds) for name, rounds in results["gap"].items()}
        print(json.dumps(results["gap_summary"], indent=1), flush=True)
    save()
    return 0


def gap_summary(rounds: list[dict]) -> dict:
    """Every repeat of every round together: best and median seconds per sample, and the gaps. The
    paired gap compares each repeat's backend run with the bare calls right after it, which the
    machine's slower and faster spells affect least."""
    backend = [v for r in rounds for v in r["backend_s_per_sample"]]
    bare = [v for r in rounds for v in r["bare_s_per_sample"]]
    noise = [v for r in rounds for v in r["noise_s_per_sample"]]
    return {"repeats": len(backend), "backend_best_s": min(backend), "bare_best_s": min(bare),
            "backend_median_s": statistics.median(backend), "bare_median_s": statistics.median(bare),
            "noise_median_s": statistics.median(noise), "gap_best": round(min(backend) / min(bare) - 1, 4),
            "gap_median": round(statistics.median(backend) / statistics.median(bare) - 1, 4),
            "gap_paired_median": round(statistics.median(a / b for a, b in zip(backend, bare)) - 1, 4)}


if __name__ == "__main__":
    sys.exit(main())
