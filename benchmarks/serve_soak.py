#!/usr/bin/env python3
"""Soak test of ``cvdvae serve``: good requests while bad clients and a dying replica try to
spoil them (127.0.0.1 only; bounded in time and count; it stops by itself).

    python benchmarks/serve_soak.py --seconds 90 --json benchmarks/results/mine-serve-soak.json

A local Ray (``--num-cpus``, no dashboard) serves the demo model (or ``--engine-dir``) with two
model replicas behind the ingress. For ``--seconds`` (or until ``--max-requests`` are sent):

- ``--good`` clients send seeded LR faces one after the other; every answer is compared with
  the samples the Pipeline makes for that face and seed alone (the pass: none lost, none wrong);
- ``--slow`` clients open a request, send part of the body and stall (each must get 408 and
  free its slot);
- ``--bad`` clients cycle through client mistakes: an oversized body, malformed JSON, deeply
  nested JSON, a GIF, a TIFF, an unsupported content type, too large an n, a temperature of
  1e39, ``true`` for n, two files in one upload, a multipart body with no boundary; each must be
  the 4xx its kind says, never a 5xx;
- a third of the way in, one model replica is killed (Ray Serve starts another; its requests
  are run again on the other).

Then the worst request the default limits allow is sent to a fresh replica, alone and then
``photos_at_once`` at a time: a 2000x2000 photo with 16 faces at x4, n = 3 (three 64 MP photos,
256 MP in all, the response budget), its replica's peak RSS (``VmHWM``) read before and after.
Reported: requests answered correctly, statuses and kinds of the rest, p50/p99 latency of the
good ones, peak RSS of every replica, the worst request's RSS.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import json
import os
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from latency import export_for  # noqa: E402 - after the path set-up
from machine import environment, today, vector_flags  # noqa: E402

GOOD_N = 4
SLOW_BODY_TIMEOUT_S = 2.0


def face_png(seed: int, size: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def encoded(image: Any, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def post(url: str, body: bytes, content_type: str, timeout: float = 120) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"content-type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        try:
            return err.code, json.loads(err.read())
        except ValueError:
            return err.code, {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- the clients
def good_client(url: str, seeds: list[int], size: int, expected: dict, stop: threading.Event,
                most: int) -> list[tuple]:
    """(seed, status, correct, seconds) per request, one after the other, going round ``seeds``,
    until ``stop`` or ``most`` requests."""
    results = []
    for i in range(most):
        if stop.is_set():
            break
        seed = seeds[i % len(seeds)]
        body = json.dumps({"image": base64.b64encode(face_png(seed, size)).decode(), "n": GOOD_N, "seed": seed})
        start = time.perf_counter()
        try:
            status, answer = post(url, body.encode(), "application/json")
        except OSError:
            status, answer = 0, {}
        seconds = time.perf_counter() - start
        correct = status == 200 and [base64.b64decode(s) for s in answer["samples"]] == expected[seed]
        results.append((seed, status, correct, seconds))
    return results


def slow_client(port: int, path: str, stop: threading.Event) -> list[tuple]:
    """Requests whose body stalls after 10 bytes: (status, kind, seconds) each."""
    results = []
    while not stop.is_set():
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                         "content-length: 1000\r\n\r\n".encode() + b'{"image": ')
            reply = b""
            try:
                while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
            except socket.timeout:
                pass
        head, _, body = reply.partition(b"\r\n\r\n")
        status = int(head.split()[1]) if head.startswith(b"HTTP/") else 0
        try:
            kind = json.loads(body[body.find(b"{"):]).get("kind")
        except ValueError:
            kind = None
        results.append((status, kind, time.perf_counter() - start))
    return results


def mistakes(size: int, limits: Any) -> list[tuple[str, bytes, str, int, str]]:
    """(name, body, content type, status, kind): the client mistakes the bad clients send."""
    from PIL import Image

    face = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    b64 = base64.b64encode(encoded(face, "PNG")).decode()
    form = "multipart/form-data; boundary=XyZ"
    two_files = (b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n"
                 + encoded(face, "PNG") + b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"image2\"; "
                 b"filename=\"b.png\"\r\n\r\n" + encoded(face, "PNG") + b"\r\n--XyZ--\r\n")
    return [
        ("oversized body", b"x" * (limits.max_body_bytes + 1), "application/json", 413, "too_large"),
        ("malformed JSON", b'{"image": ', "application/json", 400, "bad_request"),
        ("nested JSON", b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "bad_request"),
        ("GIF", json.dumps({"image": base64.b64encode(encoded(face, "GIF")).decode()}).encode(),
         "application/json", 415, "unsupported_format"),
        ("TIFF", json.dumps({"image": base64.b64encode(encoded(face, "TIFF")).decode()}).encode(),
         "application/json", 415, "unsupported_format"),
        ("text/plain", b"hello", "text/plain", 415, "unsupported_media_type"),
        ("n too large", json.dumps({"image": b64, "n": limits.max_n + 1}).encode(), "application/json", 413,
         "too_large"),
        ("temperature 1e39", json.dumps({"image": b64, "temperature": 1e39}).encode(), "application/json", 400,
         "bad_request"),
        ("n true", json.dumps({"image": b64, "n": True}).encode(), "application/json", 400, "bad_request"),
        ("two files", two_files, form, 400, "bad_request"),
        ("no boundary", b"--XyZ\r\n", "multipart/form-data", 400, "bad_request"),
    ]


def bad_client(url: str, cases: list[tuple], stop: threading.Event, start_at: int) -> list[tuple]:
    """(name, expected status, expected kind, status, kind) per request, cycling through ``cases``."""
    results, i = [], start_at
    while not stop.is_set():
        name, body, content_type, status, kind = cases[i % len(cases)]
        try:
            got, answer = post(url, body, content_type, timeout=60)
        except OSError:
            got, answer = 0, {}
        results.append((name, status, kind, got, answer.get("kind")))
        i += 1
        time.sleep(0.05)
    return results


# ---------------------------------------------------------------- Ray's processes
def replica_processes() -> dict[int, str]:
    """pid -> Ray's title (``ray::ServeReplica:app:Deployment``) of the Serve replicas and proxy."""
    found = {}
    for status in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            title = status.read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith(("ray::ServeReplica", "ray::ProxyActor")):
            found[int(status.parent.name)] = title.split()[0]
    return found


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident set (``VmHWM``), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def kill_one_replica(app: str) -> str:
    import ray

    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if "SERVE_REPLICA" in a["name"] and f"{app}#Sampler" in a["name"]]
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
    return replicas[0]["name"]


# ---------------------------------------------------------------- the worst request
def sixteen_faces_photo(side: int = 2000) -> bytes:
    """A ``side`` x ``side`` JPEG of the astronaut portrait (scikit-image) in a 4 x 4 grid: 16 faces."""
    import skimage
    from PIL import Image

    tile = Image.open(Path(skimage.__file__).parent / "data" / "astronaut.png").convert("RGB")
    tile = tile.resize((side // 4, side // 4), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (side, side))
    for k in range(16):
        canvas.paste(tile, ((k % 4) * (side // 4), (k // 4) * (side // 4)))
    return encoded(canvas, "JPEG", quality=90)


def worst_request(base: str, app: str, photos_at_once: int) -> dict:
    """The worst request the default limits allow, alone then ``photos_at_once`` together: the
    model replica's and the ingress's peak RSS after each, and what came back."""
    photo = sixteen_faces_photo()
    body = json.dumps({"image": base64.b64encode(photo).decode(), "faces": True, "n": 3, "seed": 1,
                       "max_faces": 16}).encode()
    pids = {title.rsplit(":", 1)[1]: pid for pid, title in replica_processes().items() if f":{app}:" in title}

    def one() -> tuple[int, int, int, float]:
        """Status, answer bytes, faces in the answer, seconds."""
        request = urllib.request.Request(f"{base}/v1/samples", data=body,
                                         headers={"content-type": "application/json", "accept": "application/zip"})
        start = time.perf_counter()
        with tempfile.TemporaryFile() as answer, urllib.request.urlopen(request, timeout=600) as response:
            for chunk in iter(lambda: response.read(2**20), b""):
                answer.write(chunk)
            seconds = time.perf_counter() - start
            with zipfile.ZipFile(answer) as archive:
                faces = len(json.loads(archive.read("request.json"))["faces"])
            return response.status, answer.tell(), faces, seconds

    def rss() -> dict[str, float | None]:
        return {name: peak_rss_mib(pid) for name, pid in sorted(pids.items())}

    report = {"request": "2000x2000 JPEG, 16 faces, x4, n = 3: three 8000x8000 photos (192 MP) and 48 face "
                         "samples, as a zip", "body_bytes": len(body), "peak_rss_mib_before": rss()}
    status, size, faces, seconds = one()
    report["alone"] = {"status": status, "answer_bytes": size, "faces": faces, "seconds": round(seconds, 2),
                       "peak_rss_mib": rss()}
    with ThreadPoolExecutor(photos_at_once) as pool:
        runs = list(pool.map(lambda _: one(), range(photos_at_once)))
    report["together"] = {"requests": photos_at_once, "statuses": [r[0] for r in runs],
                          "seconds": [round(r[3], 2) for r in runs], "peak_rss_mib": rss()}
    return report


# ---------------------------------------------------------------- the run
def percentile_ms(seconds: list[float], q: float) -> float | None:
    return round(float(np.percentile(seconds, q)) * 1000, 1) if seconds else None


def soak(args: argparse.Namespace, engine_dir: Path, size: int) -> dict:
    import ray
    from ray import serve

    from runtime.images.outputs import png_bytes
    from runtime.pipeline import Pipeline
    from runtime.ray_session import start_or_join
    from runtime.serve.app import build_app, start_serve
    from runtime.serve.options import Limits, ServeOptions

    pipe = Pipeline.from_pretrained(engine_dir)
    good_seeds = list(range(args.good * 16))
    expected = {seed: [png_bytes(s) for s in pipe(face_png(seed, size), GOOD_N, seed).samples[0]]
                for seed in good_seeds}
    limits = Limits(body_timeout_s=SLOW_BODY_TIMEOUT_S, max_body_bytes=2**20, timeout_s=60,
                    max_bytes_in_flight=4 * 2**20)
    port = args.port or free_port()
    start_or_join(None, num_cpus=args.num_cpus)
    start_serve({"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(ServeOptions(str(engine_dir), max_batch_size=8, batch_wait_s=0.01, limits=limits),
                            replicas=2, cpus_per_replica=args.num_cpus / 4),
                  name="soak", route_prefix="/", blocking=False)
        base = f"http://127.0.0.1:{port}"
        post(base + "/v1/samples", json.dumps({"image": base64.b64encode(face_png(0, size)).decode()}).encode(),
             "application/json")  # warm up
        stop = threading.Event()
        cases = mistakes(size, limits)
        per_client = [good_seeds[c::args.good] for c in range(args.good)]
        with ThreadPoolExecutor(args.good + args.slow + args.bad) as pool:
            good = [pool.submit(good_client, base + "/v1/samples", s, size, expected, stop,
                                args.max_requests // args.good) for s in per_client]
            slow = [pool.submit(slow_client, port, "/v1/samples", stop) for _ in range(args.slow)]
            bad = [pool.submit(bad_client, base + "/v1/samples", cases, stop, c) for c in range(args.bad)]
            time.sleep(args.seconds / 3)
            killed = kill_one_replica("soak")
            deadline = time.monotonic() + args.seconds * 2 / 3
            while time.monotonic() < deadline and not all(f.done() for f in good):
                time.sleep(0.5)
            stop.set()
            good_rows = [row for f in good for row in f.result(timeout=180)]
            slow_rows = [row for f in slow for row in f.result(timeout=180)]
            bad_rows = [row for f in bad for row in f.result(timeout=180)]
        serving = {f"{title} ({pid})": peak_rss_mib(pid) for pid, title in sorted(replica_processes().items())}
        metrics = urllib.request.urlopen(base + "/metrics", timeout=30).read().decode()
        retries = sum(float(line.split()[-1]) for line in metrics.splitlines()
                      if line.startswith("cvdvae_retries_total"))
        serve.delete("soak")

        serve.run(build_app(ServeOptions(str(engine_dir))), name="worst", route_prefix="/worst", blocking=False)
        worst = worst_request(base + "/worst", "worst", Limits().photos_at_once)
    finally:
        serve.shutdown()
        ray.shutdown()

    latencies = [seconds for _, status, correct, seconds in good_rows if correct]
    wrong_bad = [row for row in bad_rows if (row[1], row[2]) != (row[3], row[4])]
    return {
        "seconds": args.seconds, "limits": dataclasses.asdict(limits), "killed_replica": killed, "retries": retries,
        "good": {"clients": args.good, "sent": len(good_rows), "answered_correctly": len(latencies),
                 "lost": sum(1 for row in good_rows if row[1] != 200),
                 "wrong": sum(1 for row in good_rows if row[1] == 200 and not row[2]),
                 "statuses": dict(Counter(str(row[1]) for row in good_rows)),
                 "p50_ms": percentile_ms(latencies, 50), "p99_ms": percentile_ms(latencies, 99)},
        "slow_body": {"clients": args.slow, "sent": len(slow_rows),
                      "statuses": dict(Counter(f"{status} {kind}" for status, kind, _ in slow_rows)),
                      "median_s_to_answer": round(float(np.median([s for *_, s in slow_rows])), 2)
                      if slow_rows else None},
        "mistakes": {"clients": args.bad, "sent": len(bad_rows),
                     "by_case": {name: dict(Counter(f"{row[3]} {row[4]}" for row in bad_rows if row[0] == name))
                                 for name, *_ in cases},
                     "not_as_expected": len(wrong_bad), "5xx": sum(1 for row in bad_rows if row[3] >= 500)},
        "peak_rss_mib": serving,
        "worst_request": worst,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine-dir", type=Path, help="an export folder (default: export the demo model)")
    p.add_argument("--seconds", type=float, default=90.0)
    p.add_argument("--max-requests", type=int, default=5000, help="good requests, at most")
    p.add_argument("--good", type=int, default=8, help="clients sending good requests")
    p.add_argument("--slow", type=int, default=4, help="clients whose body stalls")
    p.add_argument("--bad", type=int, default=2, help="clients sending mistakes")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--port", type=int, default=0, help="default: a free one")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    from runtime.model_files import locate

    with tempfile.TemporaryDirectory(prefix="cvdvae-soak-") as tmp:
        engine_dir = args.engine_dir or export_for(Path(tmp), demo=True)
        report = soak(args, engine_dir, locate(engine_dir).lr_size)
    result = {"date": today(), "flags": sys.argv[1:],
              "environment": {**environment(os.cpu_count()), "cpu_flags": vector_flags()},
              "model": str(args.engine_dir or "demo (tiny-x4)"), **report}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    good, mistakes_ = report["good"], report["mistakes"]
    passed = good["lost"] == 0 and good["wrong"] == 0 and mistakes_["5xx"] == 0 and mistakes_["not_as_expected"] == 0
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
