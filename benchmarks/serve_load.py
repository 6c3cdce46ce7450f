#!/usr/bin/env python3
"""Load test of ``cvdvae serve`` with and without dynamic batching (bounded, 127.0.0.1 only).

    python benchmarks/serve_load.py --clients 32 --requests 8 --json benchmarks/results/mine-serve.json

A local Ray (``--num-cpus``, no dashboard) serves the demo model (or ``--engine-dir``) twice in
turn: batching off (one request per batch) and on (up to ``--max-batch-size`` requests, waiting
at most ``--wait-ms``). Each of ``--clients`` threads sends ``--requests`` JSON requests (its own
face and seed, n = ``--n``) one after the other; every answer is checked against the samples
the runtime computes for that request alone (0 lost, 0 mismatched is the pass). Reported:
requests/s, p50/p99 latency, batch sizes seen.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from latency import export_for  # noqa: E402 - after the path set-up
from machine import environment, today  # noqa: E402


def face_png(seed: int, size: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def expected_samples(engine_dir: Path, seeds: list[int], n: int, size: int) -> dict[int, list[str]]:
    """Each request's PNGs (base64) made alone by the Pipeline: the answer it must get."""
    from runtime.images.outputs import png_bytes
    from runtime.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(engine_dir)
    return {seed: [base64.b64encode(png_bytes(s)).decode() for s in pipe(face_png(seed, size), n, seed).samples[0]]
            for seed in seeds}


def one_client(url: str, seeds: list[int], n: int, size: int) -> list[tuple[int, int, list | None, float]]:
    """(seed, HTTP status, the samples or None, seconds) per request, one after the other."""
    results = []
    for seed in seeds:
        body = json.dumps({"image": base64.b64encode(face_png(seed, size)).decode(), "n": n, "seed": seed}).encode()
        start = time.perf_counter()
        request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                answer = json.loads(r.read())
            results.append((seed, r.status, answer["samples"], time.perf_counter() - start))
        except Exception as err:  # noqa: BLE001 - counted as lost
            results.append((seed, getattr(err, "code", 0), None, time.perf_counter() - start))
    return results


def load(url: str, clients: int, requests: int, n: int, size: int) -> tuple[list, float]:
    plans = [[1000 * c + r for r in range(requests)] for c in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [row for rows in pool.map(lambda seeds: one_client(url, seeds, n, size), plans) for row in rows]
    return results, time.perf_counter() - start


def batch_sizes(metrics_url: str) -> dict:
    """The mean engine batch a request ran in, from ``/metrics`` (observed once per request)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(metrics_url, timeout=30).read().decode()
    values = {sample.name: sample.value for family in text_string_to_metric_families(text)
              for sample in family.samples if sample.name in ("cvdvae_batch_size_sum", "cvdvae_batch_size_count")}
    return {"mean_requests_per_batch": round(values["cvdvae_batch_size_sum"] / values["cvdvae_batch_size_count"], 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine-dir", type=Path, help="an export folder (default: export the demo model)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=8, help="per client")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--wait-ms", type=float, default=20.0)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    import ray
    from ray import serve

    from runtime.model_files import locate
    from runtime.ray_session import start_or_join
    from runtime.serve.app import build_app, start_serve
    from runtime.serve.options import ServeOptions

    with tempfile.TemporaryDirectory(prefix="cvdvae-load-") as tmp:
        engine_dir = args.engine_dir or export_for(Path(tmp), demo=True)
        size = locate(engine_dir).lr_size
        seeds = [1000 * c + r for c in range(args.clients) for r in range(args.requests)]
        expected = expected_samples(engine_dir, seeds, args.n, size)
        start_or_join(None, num_cpus=args.num_cpus)
        start_serve({"host": "127.0.0.1", "port": 8123})
        rows = []
        try:
            for label, batch in (("no batching", 1), ("batching", args.max_batch_size)):
                options = ServeOptions(str(engine_dir), max_batch_size=batch, batch_wait_s=args.wait_ms / 1000,
                                       max_batch=batch)
                serve.run(build_app(options), name="load", route_prefix="/", blocking=False)
                url = "http://127.0.0.1:8123/v1/samples"
                one_client(url, [7], args.n, size)  # warm up
                results, wall = load(url, args.clients, args.requests, args.n, size)
                latencies = np.array([r[3] for r in results])
                ok = [r for r in results if r[1] == 200]
                mismatched = sum(1 for seed, _, samples, _ in ok if samples != expected[seed])
                rows.append({"mode": label, "max_batch_size": batch, "wait_ms": args.wait_ms,
                             "requests": len(results), "ok": len(ok), "lost": len(results) - len(ok),
                             "mismatched": mismatched, "wall_s": round(wall, 3),
                             "requests_per_s": round(len(results) / wall, 2),
                             "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
                             "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1),
                             **batch_sizes("http://127.0.0.1:8123/metrics")})
                print(json.dumps(rows[-1]), file=sys.stderr)
                serve.delete("load")
        finally:
            serve.shutdown()
            ray.shutdown()
    speedup = rows[1]["requests_per_s"] / rows[0]["requests_per_s"]
    result = {"date": today(),
              "environment": environment(os.cpu_count()), "model": str(args.engine_dir or "demo (tiny-x4)"),
              "clients": args.clients, "requests_per_client": args.requests, "n": args.n, "rows": rows,
              "batching_speedup": round(speedup, 2)}
    print(f"batching: {speedup:.2f}x the requests/s of no batching", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(r["lost"] == 0 and r["mismatched"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
