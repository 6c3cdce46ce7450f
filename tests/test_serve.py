"""``cvdvae serve`` on Ray Serve (2 CPUs, no dashboard), on the demo model: the API end to end, its
answers equal to the Pipeline's and ``cvdvae run``'s pixels, the per-request budget (body, time,
queue, pixels), the token and origin rules, every client mistake a 4xx that names no path or
address, a replica killed mid-run with nothing lost, metrics counted once for the service, an
event loop that large photos do not hold. The batching core is also checked without Ray."""

import asyncio
import base64
import concurrent.futures
import functools
import io
import json
import os
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import command, copy_export, nan_model
from PIL import Image

from runtime.backends import open_backend
from runtime.images.outputs import png_bytes
from runtime.model_files import locate
from runtime.sampling import Job, sample_jobs
from runtime.serve.options import Limits, ServeOptions

ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install -e '.[serve]')")
from ray import serve  # noqa: E402

from runtime.serve.answers import Failure, Head  # noqa: E402
from runtime.serve.app import build_app, start_serve  # noqa: E402

TOKEN = "s3cret-token-for-tests"
TOKEN_ENV = "CVDVAE_TEST_SERVE_TOKEN"
ALLOWED_ORIGIN = "https://allowed.example"
ALLOWED_HOST = "served.example"
FLAKY_STATE = Path()  # set by the service fixture
SERVE_LOGS = Path()  # this Ray's own serve log folder, set by the service fixture; another test's Ray moves session_latest
# Ray Serve kills an HTTP proxy not ready within 5 s, which a loaded CI machine can miss; Ray's
# processes read this from the environment they inherit.
PROXY_READY = ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")


def serve_precision() -> str:
    """``/slow`` computes in bf16 where this CPU can (its samples are never compared)."""
    from runtime.backends.cpu_features import bf16_missing_here

    return "bf16" if bf16_missing_here() is None else "auto"
# What an error reply must never show: a path, an object's address, a traceback.
LEAKS = re.compile(r"(/(root|home|tmp|usr|work|proc)/|\bat 0x[0-9a-f]{6,}|0x7f[0-9a-f]{6,}|Traceback|File \")")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def face_png(seed, size=8):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def astronaut():
    return Image.open(Path(__import__("skimage").__file__).parent / "data" / "astronaut.png").convert("RGB")


def photo_jpeg(width, height, faces=((100, 200, 1000), (1400, 300, 400))):
    """A ``width`` x ``height`` JPEG with the astronaut pasted at (x, y, side) for each face."""
    canvas = Image.new("RGB", (width, height), (90, 120, 150))
    for x, y, side in faces:
        canvas.paste(astronaut().resize((side, side)), (x, y))
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def need_detector():
    from cvdvae.hub.home import cvdvae_home

    if not (cvdvae_home() / "mtcnn" / "onet.onnx").is_file():
        pytest.skip("MTCNN graphs not fetched (cvdvae fetch mtcnn)")


@serve.deployment(name="Sampler", max_ongoing_requests=1, max_queued_requests=1,
                  ray_actor_options={"num_cpus": 0})
class FakeSampler:
    """A stand-in for the model replicas, to drive the ingress where the real model cannot: seed 1
    fails with an internal error whose text holds a path and an address; seed 2 notes in ``state``
    that it is held, then waits until the file ``release`` appears there (at most 60 s)."""

    def __init__(self, state):
        self.state = Path(state)

    async def describe(self):
        return {"model": "fake", "conditional": True, "lr_size": 8, "hr_size": 32, "scale": 4, "backend": "fake"}

    async def answer(self, request, budget_s):
        if request.seed == 1:
            raise RuntimeError("cannot read /root/.cache/cvdvae/private.bin (<_io.BytesIO object at 0x7f3a2b1c0d0e>)")
        deadline = time.monotonic() + 60
        if request.seed == 2:
            with open(self.state / "held", "a") as f:
                f.write("x\n")
        while request.seed == 2 and not (self.state / "release").exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        yield Head({"model": "fake", "seed": request.seed, "n": 1, "temperatures": [0.8]}, [face_png(0)], [], 0, 1, [])


@serve.deployment(name="Sampler", ray_actor_options={"num_cpus": 0})
class FlakySampler:
    """A stand-in for model replicas that die, for the ingress's retry rules; what happened is kept
    in files under ``state`` (each replica is its own process, and outlives none of them):
    - seeds 5, 6 and 13: a head and one of two photos, then, once the file ``passed-{seed}`` says
      the client has that photo, the replica is killed from outside (5 and 6: as a node lost or an
      operator's ``ray.kill``) or crashes of its own (13: its process exits); run again, seed 5
      starts with a 503 and seed 6 sends other bytes;
    - seed 3: an answer that takes a minute (a client that gives up first); any other: two photos;
    - ``describe`` calls are counted."""

    def __init__(self, state):
        self.state = Path(state)

    def _note(self, name):
        with open(self.state / name, "a") as f:
            f.write("x\n")

    async def describe(self):
        self._note("describes")
        return {"model": "flaky", "conditional": True, "lr_size": 8, "hr_size": 32, "scale": 4, "backend": "fake"}

    async def answer(self, request, budget_s):
        head = Head({"model": "flaky", "seed": request.seed, "n": 2, "temperatures": [0.8, 0.8]}, [], [], 2, 2, [])
        if request.seed == 3:
            await asyncio.sleep(60)
        if request.seed not in (5, 6, 13):
            yield head
            yield face_png(0)
            yield face_png(2)
            return
        first = not (self.state / f"attempt-{request.seed}").exists()
        self._note(f"attempt-{request.seed}")
        if not first and request.seed == 5:
            yield Failure(503, "unavailable", "the model is not loaded yet")
            return
        yield head
        yield face_png(0 if first else 1)
        if first:
            deadline = time.monotonic() + 60
            while not (self.state / f"passed-{request.seed}").exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if request.seed == 13:
                self._note("deaths")
                os._exit(1)
            name = serve.get_replica_context().replica_id.to_full_id_str()
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
            await asyncio.sleep(60)
        yield face_png(2)


def lines(path):
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def demo(tmp_path_factory, demo_export):
    return copy_export(demo_export, tmp_path_factory.mktemp("serve") / "demo")


@pytest.fixture(scope="module")
def service(demo, tmp_path_factory):
    """Applications on one local Ray, each an ingress before its model replicas:
    - ``/``: the demo model, a token, two replicas, small limits;
    - ``/big``: no token, large photos allowed, one allowed web origin, one more host name;
    - ``/slow``: a half-second deadline, for photos that take longer; bf16 where the CPU has it;
    - ``/broken``: a model whose samples are NaN/Inf for t >= 1;
    - ``/fake``: the ingress before ``FakeSampler`` (one request at a time, one queued);
    - ``/flaky``: the ingress before two ``FlakySampler`` replicas, 350 kB of bodies at once."""
    global FLAKY_STATE, SERVE_LOGS
    FLAKY_STATE = tmp_path_factory.mktemp("flaky")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    os.environ[TOKEN_ENV] = TOKEN  # before Ray starts: its processes inherit it
    os.environ.setdefault(*PROXY_READY)
    port = free_port()
    context = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                       configure_logging=False)
    SERVE_LOGS = Path(context.address_info["session_dir"]) / "logs" / "serve"
    try:
        yield from started_service(demo, port)
    finally:
        serve.shutdown()
        ray.shutdown()
    with pytest.raises(OSError):  # clean shutdown: nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def started_service(demo, port):
    """The applications of ``service`` on the Ray this process started; yields the URL."""
    start_serve({"host": "127.0.0.1", "port": port})
    small = Limits(max_body_bytes=200_000, max_image_pixels=1_000_000, max_photo_pixels=1_000_000, max_n=8,
                   timeout_s=60, body_timeout_s=2, max_response_pixels=40_000_000)
    apps = {
        "cvdvae": ("/", build_app(ServeOptions(str(demo), max_batch_size=8, batch_wait_s=0.05, token_env=TOKEN_ENV,
                                               limits=small), replicas=2, cpus_per_replica=0.5)),
        "big": ("/big", build_app(ServeOptions(str(demo), cors_origins=(ALLOWED_ORIGIN,), allowed_hosts=(ALLOWED_HOST,),
                                               limits=Limits(max_output_pixels=100_000_000,
                                                             max_response_pixels=400_000_000)), cpus_per_replica=0.5)),
        "slow": ("/slow", build_app(ServeOptions(str(demo), limits=Limits(
            timeout_s=0.5, max_output_pixels=10**9, max_response_pixels=10**10), precision=serve_precision()),
            cpus_per_replica=0)),
        "broken": ("/broken", build_app(ServeOptions(str(nan_model(demo.parent / "broken"))), cpus_per_replica=0)),
        "fake": ("/fake", build_app(ServeOptions(str(demo), limits=Limits(retry_after_s=7)),
                                    sampler=FakeSampler.bind(str(FLAKY_STATE)))),
        "flaky": ("/flaky", build_app(ServeOptions(str(demo), limits=Limits(max_body_bytes=200_000,
                                                                          max_bytes_in_flight=350_000)),
                                      sampler=FlakySampler.options(num_replicas=2).bind(str(FLAKY_STATE)))),
    }
    serve.run_many([serve.RunTarget(app, name=name, route_prefix=route) for name, (route, app) in apps.items()])
    url = f"http://127.0.0.1:{port}"
    for route, _ in apps.values():
        wait_ready(url + route.rstrip("/") + "/readyz")
    yield url


def wait_ready(url, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return json.loads(r.read())
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready after {seconds} s")


def call(url, body=None, headers=None, method=None, timeout=60):
    """(status, headers, body) of one request."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def post(url, body: bytes, content_type="application/json", token=TOKEN, accept=None, timeout=60, headers=None):
    headers = {"content-type": content_type, **(headers or {})}
    if token:
        headers["authorization"] = f"Bearer {token}"
    if accept:
        headers["accept"] = accept
    status, answer_headers, data = call(url, body, headers, timeout=timeout)
    return status, answer_headers.get("content-type"), data


def sample_json(url, token=TOKEN, timeout=60, **fields):
    status, content_type, body = post(url + "/v1/samples", json.dumps(fields).encode(), token=token, timeout=timeout)
    if content_type != "application/json":  # Ray's proxy answers some failures in plain text
        return status, {"error": body.decode(errors="replace"), "kind": None}
    return status, json.loads(body)


def multipart(fields: dict, image: bytes | None, boundary="cvdvae-test-boundary", files=1):
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    for _ in range(files if image is not None else 0):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="face.png"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def b64(data):
    return base64.b64encode(data).decode()


def assert_clean_error(status, body, expected_status, kind):
    """A client's error reply: its status and kind, one line, no path, address or traceback."""
    answer = json.loads(body) if isinstance(body, bytes) else body
    assert status == expected_status and answer["kind"] == kind, (status, answer)
    assert answer["error"] and "\n" not in answer["error"] and not LEAKS.search(answer["error"]), answer


@functools.cache
def local_backend(demo):
    """The engine ``cvdvae run`` picks for the demo model, opened once for the module."""
    return open_backend(locate(demo), "auto")


def local_samples(demo, seed, n, temperature=0.8):
    """What ``cvdvae run`` computes for this face, as PNG bytes: the oracle for the service."""
    from runtime.images.outputs import to_uint8

    backend = local_backend(demo)
    lr = np.asarray(Image.open(io.BytesIO(face_png(seed))).convert("RGB")).transpose(2, 0, 1).astype(np.float32)
    out = backend.sample(lr[None], seed, 0, np.full(n, temperature, np.float32)).samples[0]
    return [png_bytes(to_uint8(s)) for s in out]


# ---------------------------------------------------------------- without Ray
@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_batched_jobs_are_the_jobs_run_alone(demo, engine):
    """Rows of one call with different seeds, n and temperatures equal each request alone; where
    rows are not independent (ONNX Runtime), each request gets its own calls."""
    pytest.importorskip(engine)
    backend = open_backend(locate(demo), engine, max_batch=4, max_n=3)
    rng = np.random.default_rng(0)
    jobs = [Job(rng.uniform(0, 255, (3, 8, 8)).astype(np.float32), seed, rng.uniform(0, 1, n).astype(np.float32))
            for seed, n in [(1, 5), (2, 5), (3, 2), (4, 5), (5, 5), (6, 5), (7, 2)]]
    together = sample_jobs(backend, jobs)
    calls = backend.timings.calls
    alone = [sample_jobs(backend, [job])[0] for job in jobs]
    for a, b in zip(together, alone):
        np.testing.assert_array_equal(a.samples, b.samples)
    # n=5: 5 jobs, each in 2 sample chunks (3 + 2); n=2: 2 jobs in 1 chunk
    assert calls == (2 * 2 + 1 if engine == "openvino" else 5 * 2 + 2)


class RecordingRows:
    """A backend that records which images share each engine call."""

    def __init__(self, backend):
        self.backend, self.rows_independent, self.calls = backend, backend.rows_independent, []
        self.max_batch, self.max_n = backend.max_batch, backend.max_n

    def sample_rows(self, lr, seeds, first_sample, temperature):
        self.calls.append([float(image.sum()) for image in lr])
        return self.backend.sample_rows(lr, seeds, first_sample, temperature)


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_a_requests_rows_share_calls_with_anothers_only_where_rows_are_independent(demo, engine):
    """Three requests of one seed (the first a photo's two faces): where rows are not independent
    (ONNX Runtime), no call holds two requests' rows, though one seed would let them share noise;
    each request's samples are what it gives alone (on ONNX Runtime these rows differ by position
    in a call). Where rows are independent (OpenVINO), all share one call."""
    from runtime.serve.sampler import sample_requests

    pytest.importorskip(engine)
    backend = RecordingRows(open_backend(locate(demo), engine, max_batch=8))
    independent = backend.rows_independent
    rng = np.random.default_rng(1)
    requests = [[Job(rng.uniform(0, 255, (3, 8, 8)).astype(np.float32), 7, np.full(2, 0.8, np.float32))
                 for _ in range(faces)] for faces in (2, 1, 1)]
    owner = {float(job.lr.sum()): r for r, jobs in enumerate(requests) for job in jobs}
    together = sample_requests(backend, requests)
    calls = backend.calls
    assert len(calls) == (1 if independent else 3)
    assert all(len({owner[image] for image in call}) == 1 for call in calls) or independent, calls
    for jobs, got in zip(requests, together):
        for a, b in zip(got, sample_jobs(backend, jobs)):
            np.testing.assert_array_equal(a.samples, b.samples)


# ---------------------------------------------------------------- the API
def test_json_request_gives_the_local_samples(service, demo):
    status, body = sample_json(service, image=b64(face_png(3)), n=3, seed=3)
    assert status == 200 and body["n"] == 3 and body["seed"] == 3 and body["temperatures"] == [0.8] * 3
    assert body["model"].startswith("cvdvae-")
    assert [base64.b64decode(s) for s in body["samples"]] == local_samples(demo, 3, 3)


def test_a_request_varies_the_details_of_one_sample(service, demo):
    """like, vary_from and temperature_at (JSON and form): the pipeline's own samples of that recipe; a level
    the model lacks is a 400 naming the field."""
    from cvdvae import Pipeline

    want = Pipeline.from_pretrained(demo)(face_png(3), n=3, seed=3, like=1, vary_from=16, temperature_at={32: 0.5})
    status, body = sample_json(service, image=b64(face_png(3)), n=3, seed=3, like=1, vary_from=16,
                               temperature_at={"32": 0.5})
    assert status == 200, body
    got = [np.asarray(Image.open(io.BytesIO(base64.b64decode(s)))) for s in body["samples"]]
    assert all(np.array_equal(g, w) for g, w in zip(got, want.samples[0]))
    data, kind = multipart({"n": "3", "seed": "3", "like": "1", "vary_from": "16", "temperature_at": "32=0.5"},
                           face_png(3))
    status, content_type, answer = post(service + "/v1/samples", data, kind, accept="application/zip")
    archive = zipfile.ZipFile(io.BytesIO(answer))
    assert status == 200 and [archive.read(f"sample_s3_{k:02d}.png") for k in range(3)] == \
        [base64.b64decode(s) for s in body["samples"]]
    status, body = sample_json(service, image=b64(face_png(3)), n=3, like=1, vary_from=12)
    assert_clean_error(status, body, 400, "bad_request")
    assert body["error"].startswith("vary_from: 12 is not a level of this model")


def test_multipart_request_and_zip_answer(service, demo):
    data, kind = multipart({"n": "2", "seed": "4", "temperature": "0.8,0.8"}, face_png(4))
    status, content_type, body = post(service + "/v1/samples", data, kind, accept="application/zip")
    assert status == 200 and content_type == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.namelist() == ["sample_s4_00.png", "sample_s4_01.png", "request.json"]
    assert [archive.read(f"sample_s4_{k:02d}.png") for k in range(2)] == local_samples(demo, 4, 2)


def test_a_summary_is_the_mean_and_std_map_cvdvae_run_writes(service, demo, tmp_path):
    """``summary: true``: the mean and the standard deviation map, in JSON and in the zip, are the
    bytes ``cvdvae run --summary`` writes for the same face and seed (which tests/test_summary.py
    checks against numpy), and the samples are unchanged."""
    from runtime.cli.run import main as run_main

    (tmp_path / "face.png").write_bytes(face_png(6))
    assert run_main([str(demo), "--input", str(tmp_path / "face.png"), "--n", "3", "--seed", "6", "--summary",
                     "--out", str(tmp_path / "run"), "--quiet"]) == 0
    status, body = sample_json(service, image=b64(face_png(6)), n=3, seed=6, summary=True)
    assert status == 200 and [base64.b64decode(s) for s in body["samples"]] == local_samples(demo, 6, 3)
    data, kind = multipart({"n": "3", "seed": "6", "summary": "true"}, face_png(6))
    status, _, zipped = post(service + "/v1/samples", data, kind, accept="application/zip")
    archive = zipfile.ZipFile(io.BytesIO(zipped))
    for what in ("mean", "std"):
        written = (tmp_path / "run" / f"face_s6_{what}.png").read_bytes()
        assert base64.b64decode(body[what]) == written == archive.read(f"sample_s6_{what}.png")
    assert "mean" not in sample_json(service, image=b64(face_png(6)), n=2, seed=6)[1]


def test_consistent_samples_are_the_models_projection(service, demo):
    """``consistent`` applies the exact LR-consistency projection: PyTorch's (cvdvae.degradation)
    applied to the plain samples gives the same PNGs, to one 8-bit level."""
    import torch

    from cvdvae.degradation import bicubic_degradation
    from runtime.images.outputs import to_uint8

    status, body = sample_json(service, image=b64(face_png(6)), n=2, seed=6, consistent=True, temperature=[0.5, 1.0])
    assert status == 200 and body["consistent"] is True
    backend = local_backend(demo)
    lr = np.asarray(Image.open(io.BytesIO(face_png(6))).convert("RGB")).transpose(2, 0, 1).astype(np.float32)
    plain = torch.from_numpy(backend.sample(lr[None], 6, 0, np.array([0.5, 1.0], np.float32)).samples[0]).double()
    projected = bicubic_degradation(32, 4).project(plain * 255, torch.from_numpy(lr).double()) / 255
    for sample, expected in zip(body["samples"], projected.clamp(0, 1).float().numpy()):
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(sample)))).astype(int)
        assert np.abs(got - to_uint8(expected)).max() <= 1
        assert np.abs(got - to_uint8(plain[0].float().numpy())).max() > 10  # the projection did change them


def test_requests_batched_together_get_their_own_bytes(service):
    """16 requests at once (different seeds, n and temperatures) equal the same requests one by
    one; batches of several jobs did happen (the metrics say so)."""
    cases = [dict(image=b64(face_png(i)), n=1 + i % 3, seed=100 + i, temperature=0.3 + 0.1 * (i % 4))
             for i in range(16)]
    alone = [sample_json(service, **case)[1]["samples"] for case in cases]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda case: sample_json(service, **case)[1]["samples"], cases))
    assert together == alone
    metrics = metrics_text(service)
    assert float(metric(metrics, "cvdvae_batch_size_sum")) > float(metric(metrics, "cvdvae_batch_size_count"))


def metrics_text(service):
    status, headers, body = call(service + "/metrics", headers={"authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return body.decode()


def metric(text, name, **labels):
    """A sample's value from Prometheus' text format, parsed with the library's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == str(v) for k, v in labels.items()):
                return sample.value
    return 0.0


TWO_FILES = multipart({"n": "1"}, face_png(1), files=2)
NO_BOUNDARY = (multipart({"n": "1"}, face_png(1))[0], "multipart/form-data")
NESTED = (b"[" * 50_000 + b"]" * 50_000, "application/json")


@pytest.mark.parametrize("body, content_type, token, status, kind", [
    (dict(n=2), None, TOKEN, 400, "bad_request"),                                   # no image
    (dict(image="not base64!", n=2), None, TOKEN, 400, "bad_request"),
    (dict(image=b64(b"not a png"), n=2), None, TOKEN, 400, "bad_image"),
    (dict(image=b64(face_png(1, size=9)), n=2), None, TOKEN, 422, "wrong_size"),
    (dict(image=b64(face_png(1)), n=9), None, TOKEN, 413, "too_large"),               # over max_n = 8
    (dict(image=b64(face_png(1)), n=True), None, TOKEN, 400, "bad_request"),
    (dict(image=b64(face_png(1)), n=2, seed=2**64), None, TOKEN, 400, "bad_request"),
    (dict(image=b64(face_png(1)), n=2, colour="blue"), None, TOKEN, 400, "bad_request"),
    (dict(image=b64(face_png(1)), n=2), None, None, 401, "unauthorized"),
    (dict(image=b64(face_png(1)), n=2), None, "wrong", 401, "unauthorized"),
    (dict(image=b64(face_png(1)), n=2), None, TOKEN[:-1], 401, "unauthorized"),
    (TWO_FILES[0], TWO_FILES[1], TOKEN, 400, "bad_request"),
    (NO_BOUNDARY[0], NO_BOUNDARY[1], TOKEN, 400, "bad_request"),
    (b"--x\r\nContent-Disposition: form-data; name=\"n\"\r\n\r\n1", "multipart/form-data; boundary=x", TOKEN, 400,
     "bad_request"),                                                                    # no closing boundary
    (NESTED[0], NESTED[1], TOKEN, 400, "bad_request"),
    (b"n=1&n=2", "application/x-www-form-urlencoded", TOKEN, 400, "bad_request"),
    (b"image=x", "text/plain", TOKEN, 415, "unsupported_media_type"),
    (b"\x89PNG", "image/png", TOKEN, 415, "unsupported_media_type"),
    (dict(image=b64(face_png(1))[:-4] + "\u00e9\u00e9\u00e9\u00e9"), None, TOKEN, 400, "bad_request"),
])
def test_every_client_mistake_is_a_4xx_with_its_kind_and_no_leak(service, body, content_type, token, status, kind):
    """Each once answered 500 "internal" (two files, no boundary, nested JSON) or was accepted
    (true as a number); each is now its status and kind, counted, with one clean line."""
    before = metric(metrics_text(service), "cvdvae_errors_total", kind=kind)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    got, content, answer = post(service + "/v1/samples", data, content_type or "application/json", token=token)
    assert content == "application/json"
    assert_clean_error(got, answer, status, kind)
    assert metric(metrics_text(service), "cvdvae_errors_total", kind=kind) == before + 1


@pytest.mark.parametrize("fmt, named", [("TIFF", "TIFF"), ("BMP", "BMP"), ("GIF", "GIF"), ("EPS", "PostScript (EPS)")])
def test_only_png_jpeg_and_webp_are_decoded_and_the_others_are_415(service, demo, fmt, named):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, fmt)
    status, body = sample_json(service, image=b64(buffer.getvalue()), n=1)
    assert_clean_error(status, body, 415, "unsupported_format")
    assert f"a {named} image; only PNG, JPEG and WebP are taken" in body["error"]
    buffer = io.BytesIO()
    Image.open(io.BytesIO(face_png(2))).save(buffer, "WEBP", lossless=True)  # the three taken: WebP too
    status, body = sample_json(service, image=b64(buffer.getvalue()), n=1, seed=2)
    assert status == 200 and [base64.b64decode(s) for s in body["samples"]] == local_samples(demo, 2, 1)


@pytest.mark.parametrize("fields, message", [({"temperature": 1e39}, "from 0 to 10"),
                                             ({"temperature": 10.5}, "from 0 to 10"),
                                             ({"temperature": float("inf")}, "not a number"),
                                             ({"temperature": True}, "from 0 to 10"),
                                             ({"temperature": [0.5, False]}, "from 0 to 10")])
def test_a_temperature_beyond_float32_or_the_maximum_or_a_boolean_is_a_400(service, fields, message):
    """1e39 is finite as float64 but inf as float32 (it once became a 500 "NaN/Inf samples");
    ``true`` was once taken as 1.0."""
    body = json.dumps({"image": b64(face_png(1)), "n": 2, **fields}).encode()  # json.dumps writes inf as Infinity
    status, _, answer = post(service + "/v1/samples", body)
    assert_clean_error(status, answer, 400, "bad_request")
    assert "temperature" in json.loads(answer)["error"]


def test_a_photo_comes_back_in_its_own_format_as_cvdvae_run_writes_it(service, demo, tmp_path):
    """Without ``format`` a JPEG photo's whole photos are JPEGs, byte for byte the files ``cvdvae run
    --faces`` writes by default; ``format``/``quality`` choose as ``--format``/``--quality`` do."""
    from runtime.cli.run import main as run_main

    need_detector()
    (tmp_path / "two.jpg").write_bytes(photo_jpeg(600, 400, faces=((20, 20, 300), (350, 60, 220))))
    for fields, flags, suffix in (({}, [], ".jpg"), ({"format": "webp", "quality": "80"},
                                                     ["--format", "webp", "--quality", "80"], ".webp")):
        out = tmp_path / suffix[1:]
        assert run_main([str(demo), "--input", str(tmp_path / "two.jpg"), "--faces", "--n", "2", "--seed", "3",
                         *flags, "--out", str(out), "--quiet"]) == 0
        form, kind = multipart({"n": "2", "seed": "3", "faces": "true", **fields}, (tmp_path / "two.jpg").read_bytes())
        status, _, zipped = post(service + "/v1/samples", form, kind, accept="application/zip")
        assert status == 200, zipped[:300]
        archive = zipfile.ZipFile(io.BytesIO(zipped))
        assert json.loads(archive.read("request.json"))["photo_format"] == {".jpg": "jpeg", ".webp": "webp"}[suffix]
        for k in range(2):
            assert archive.read(f"photo_s3_{k:02d}{suffix}") == (out / f"two_s3_{k:02d}{suffix}").read_bytes()


def test_body_and_pixel_limits(service):
    status, _, body = post(service + "/v1/samples", b"{" + b" " * 300_000 + b"}")
    assert_clean_error(status, body, 413, "too_large")
    buffer = io.BytesIO()
    Image.new("RGB", (1500, 1500)).save(buffer, "PNG")  # 2.25 MP, small on the wire, over the 1 MP limit
    status, body = sample_json(service, image=b64(buffer.getvalue()), n=1)
    assert_clean_error(status, body, 413, "too_large")
    assert "pixels" in body["error"]


def test_an_answer_over_the_pixel_budget_is_refused_from_the_photos_header(service):
    """1000x1000 at x4 is 16 MP a photo: n = 3 is 48 MP, over the 40 MP this app's answers may
    hold; refused from the header, before a pixel is decoded (the photo has no face, so a
    decoded one would be 422 no_face)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1000, 1000), (128, 128, 128)).save(buffer, "PNG")
    status, body = sample_json(service, image=b64(buffer.getvalue()), n=3, faces=True)
    assert_clean_error(status, body, 413, "too_large")
    assert "48 megapixels" in body["error"] and "40" in body["error"]


def test_a_slow_body_is_408_and_frees_its_slot(service):
    """A client that sends half its body and stalls gets 408 after the body deadline (2 s here)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", int(service.rsplit(":", 1)[1])), timeout=30) as sock:
        sock.sendall(b"POST /v1/samples HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 1000\r\n\r\n{\"n\": ")
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    seconds = time.monotonic() - start
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and 1.9 < seconds < 10, (head, seconds)
    assert_clean_error(408, body, 408, "slow_body")
    assert sample_json(service, image=b64(face_png(1)), n=1)[0] == 200


def test_the_precision_option_reaches_the_engine_and_readyz_says_what_ran(service):
    if serve_precision() != "bf16":
        pytest.skip("this CPU has no native bf16: /slow runs FP32")
    ready = wait_ready(service + "/slow/readyz")
    assert ready["precision"] == "bf16" and "residual" in ready["fp32_groups"]
    assert wait_ready(service + "/big/readyz")["precision"] == "fp32"


def test_a_request_past_its_deadline_is_504_and_its_work_abandoned(service):
    """``/slow`` gives a request 0.5 s; finding the faces of a 4000x3000 photo takes longer. The
    client gets 504 on time, the replica's request is cancelled (it stops answering at once,
    though the detection already running must finish) and no further step starts.

    The half second counts from the request's first byte, so on a busy machine the photo's 1 MB
    body itself may take it all: that request is a clean 408 that reached no replica, and is sent
    again until one body arrives in time."""
    need_detector()
    sampler = serve.get_deployment_handle("Sampler", app_name="slow")
    photo = photo_jpeg(4000, 3000, faces=((200, 400, 2000), (2600, 600, 800)))
    for _ in range(5):
        start = time.monotonic()
        status, body = sample_json(service + "/slow", token=None, image=b64(photo), n=2, faces=True)
        if status != 408:
            break
        assert_clean_error(status, body, 408, "slow_body")
    assert_clean_error(status, body, 504, "timeout")
    assert time.monotonic() - start < 5
    deadline = time.monotonic() + 20
    while (activity := sampler.activity.remote().result())["answering"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert activity["answering"] == 0
    # the detection already running ends (a worker thread cannot be stopped); nothing may follow it.
    # A deadline, not a bound: under a CPU burner one 12 MP detection took over 30 s.
    idle = wait_for(lambda: (report := sampler.activity.remote().result())["working"] == 0 and report, 120,
                    "the running step to end")
    assert idle["steps"] == activity["steps"]
    # The replica still answers (asked directly: a tiny request may itself miss 0.5 s on a busy
    # CI machine).
    assert sampler.describe.remote().result()["model"]


# An event loop held by heavy work stalls answers for a second and more. The bounds are well under
# that and well over what a busy machine adds: the service shares two cores with another test
# process in CI, or with a CPU burner (benchmarks/flake_soak.py); the figures are in each test.
HELD_LOOP_S = 0.5  # the median answer, beyond its median with nothing in flight
STALLED_S = 1.5    # any one answer


def test_a_large_photo_does_not_hold_the_event_loop(service, demo):
    """While a 2000x1500 photo is decoded, detected, pasted back at x4 and encoded (48 MP a photo,
    seconds of work), /healthz and the replica's ``describe`` answer, and a small request to the
    same model replica completes, with its own samples, before the photo does. A held loop would
    stall an answer for the ~2 s one photo's encoding takes (more on a busy machine): none may take
    ``STALLED_S``, half must take under ``HELD_LOOP_S``. Measured: 0.01 s quiet; with another
    process keeping both cores busy, medians 0.17 and 0.10 s, the slowest 0.55 and 0.89 s."""
    need_detector()
    photo = photo_jpeg(2000, 1500)
    done = {}

    def send_photo():
        status, content, body = post(service + "/big/v1/samples", multipart({"n": "2", "faces": "true"}, photo)[0],
                                     multipart({}, None)[1], token=None, accept="application/zip", timeout=120)
        done["photo"] = (time.monotonic(), status, body)

    sampler = serve.get_deployment_handle("Sampler", app_name="big")
    thread = threading.Thread(target=send_photo)
    thread.start()
    wait_for(lambda: sampler.activity.remote().result()["answering"] or "photo" in done, 60, "the photo at its replica")
    health, described = [], []
    while "photo" not in done and len(health) < 200:
        start = time.monotonic()
        assert call(service + "/big/healthz", timeout=10)[0] == 200
        health.append(time.monotonic() - start)
        if "small" not in done:
            status, body = sample_json(service + "/big", token=None, image=b64(face_png(3)), n=2, seed=3)
            done["small"] = (time.monotonic(), status, body)
        time.sleep(0.05)
        start = time.monotonic()
        assert sampler.describe.remote().result()["model"]
        described.append(time.monotonic() - start)
    thread.join(120)
    finished, status, body = done["photo"]
    assert status == 200, body[:300]
    # a JPEG photo's whole photos come back as JPEGs (its own format)
    assert zipfile.ZipFile(io.BytesIO(body)).namelist()[-3:] == ["photo_s0_00.jpg", "photo_s0_01.jpg", "request.json"]
    small_finished, small_status, small_body = done["small"]
    assert small_status == 200 and [base64.b64decode(s) for s in small_body["samples"]] == local_samples(demo, 3, 2)
    assert small_finished < finished
    assert len(health) >= 5 and np.median(health) < HELD_LOOP_S and max(health) < STALLED_S, health
    # the replica's own loop: the upscale is on a worker thread
    assert np.median(described) < HELD_LOOP_S and max(described) < STALLED_S, described


def test_a_full_queue_is_503_with_retry_after(service):
    """``/fake``'s replica takes one request at a time and queues one; seed 2 holds it until the test
    releases it. Once the first is held at the replica, of two more sent at once one is queued and
    the other refused at once with 503 and Retry-After; released, the others are answered."""
    body = json.dumps({"image": b64(face_png(0)), "n": 1, "seed": 2}).encode()
    (FLAKY_STATE / "release").unlink(missing_ok=True)
    held = lines(FLAKY_STATE / "held")
    send = lambda: call(service + "/fake/v1/samples", body, {"content-type": "application/json"})  # noqa: E731
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(send)]
        wait_for(lambda: lines(FLAKY_STATE / "held") == held + 1, 60, "the first request at the replica")
        futures += [pool.submit(send) for _ in range(2)]
        first = next(iter(concurrent.futures.as_completed(futures, timeout=60)))
        status, headers, data = first.result()
        assert_clean_error(status, data, 503, "busy")
        assert headers["retry-after"] == "7"
        (FLAKY_STATE / "release").touch()
        results = [f.result(timeout=60) for f in futures]
    assert sorted(status for status, _, _ in results) == [200, 200, 503]


def test_an_internal_error_is_logged_with_its_traceback_and_the_client_gets_only_an_id(service):
    status, body = sample_json(service + "/fake", token=None, image=b64(face_png(0)), n=1, seed=1)
    assert_clean_error(status, body, 500, "internal")
    request_id = body["request_id"]
    assert request_id in body["error"]
    deadline = time.monotonic() + 10
    while not (text := logs_naming(request_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert text, "the request id is in no replica log"
    assert "Traceback" in text and "private.bin" in text  # the operator sees it all


def logs_naming(request_id: str) -> str:
    """The text of every serve log of this Ray that names ``request_id``."""
    texts = (path.read_text(errors="replace") for path in SERVE_LOGS.glob("*.log"))
    return "".join(text for text in texts if request_id in text)


def test_the_token_guards_the_api_metrics_and_docs_but_not_health(service):
    for path in ("/metrics", "/docs", "/openapi.json"):
        status, headers, body = call(service + path)
        assert_clean_error(status, body, 401, "unauthorized")
        assert headers["www-authenticate"].startswith("Bearer")
        status, _, body = call(service + path, headers={"authorization": f"Bearer {TOKEN}"})
        assert status == 200, path
    status, _, body = call(service + "/openapi.json", headers={"authorization": f"Bearer {TOKEN}"})
    assert "/v1/samples" in json.loads(body)["paths"]
    status, _, body = call(service + "/docs", headers={"authorization": f"Bearer {TOKEN}"})
    assert b"swagger" in body.lower() and b"/v1/samples" in body  # the schema inline: no second, tokenless fetch
    assets = re.findall(rb'(?:src|href)="([^"]+)"', body)
    assert len(assets) == 3 and all(a.startswith(b"docs-assets/") for a in assets), assets  # no CDN: works offline
    for asset in assets:
        status, headers, data = call(service + "/" + asset.decode())
        assert status == 200 and len(data) > 500 and headers["content-type"].split(";")[0] in (
            "text/javascript", "text/css", "image/png"), asset
    assert call(service + "/docs-assets/index.html")[0] == 404  # the package's files, not its folder
    assert call(service + "/healthz")[0] == 200 and call(service + "/readyz")[0] == 200
    assert call(service + "/")[0] == 200  # the page itself holds nothing; it asks for the token


def test_other_web_origins_are_refused_unless_allowed(service, demo):
    """A browser on another origin may not make the service work: refused (403) before the body
    is read; the service's own page and non-browser clients pass; ``/big`` allows one origin."""
    good = json.dumps({"image": b64(face_png(4)), "n": 1, "seed": 4}).encode()
    host = service.split("//", 1)[1]
    for url, token in ((service, TOKEN), (service + "/big", None)):
        status, _, body = post(url + "/v1/samples", good, token=token, headers={"origin": "https://evil.example"})
        assert_clean_error(status, body, 403, "forbidden_origin")
        status, _, body = post(url + "/v1/samples", good, token=token, headers={"origin": f"http://{host}"})
        assert status == 200
        status, _, body = call(url + "/v1/samples", method="OPTIONS", headers={
            "origin": "https://evil.example", "access-control-request-method": "POST"})
        assert_clean_error(status, body, 403, "forbidden_origin")
    status, headers, body = call(service + "/big/v1/samples", method="OPTIONS", headers={
        "origin": ALLOWED_ORIGIN, "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type"})
    assert status == 204 and headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "authorization" in headers["access-control-allow-headers"]
    assert "POST" in headers["access-control-allow-methods"]
    status, content_type, body = post(service + "/big/v1/samples", good, token=None, headers={"origin": ALLOWED_ORIGIN})
    assert status == 200 and [base64.b64decode(s) for s in json.loads(body)["samples"]] == local_samples(demo, 4, 1)


def test_bad_requests_do_not_harm_good_ones_in_the_same_moment(service, demo):
    good = dict(image=b64(face_png(8)), n=2, seed=8)
    bad = dict(image=b64(face_png(8, size=9)), n=2, seed=8)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda f: sample_json(service, **f), [good, bad] * 4))
    expected = local_samples(demo, 8, 2)
    for (status, body), fields in zip(results, [good, bad] * 4):
        if fields is good:
            assert status == 200 and [base64.b64decode(s) for s in body["samples"]] == expected
        else:
            assert status == 422


def test_health_ready_page_and_metrics_counts(service):
    assert json.loads(call(service + "/healthz")[2]) == {"status": "ok"}
    ready = wait_ready(service + "/readyz")
    assert ready["lr_size"] == 8 and ready["hr_size"] == 32 and ready["max_n"] == 8 and ready["conditional"]
    status, headers, body = call(service + "/")
    assert headers["content-type"].startswith("text/html") and b"<form" in body
    before = metrics_text(service)
    assert sample_json(service, image=b64(face_png(2)), n=3)[0] == 200
    after = metrics_text(service)
    assert metric(after, "cvdvae_requests_total", status=200) == metric(before, "cvdvae_requests_total", status=200) + 1
    assert metric(after, "cvdvae_samples_total") == metric(before, "cvdvae_samples_total") + 3
    assert metric(after, "cvdvae_queue_depth") == 0


def busiest(sampler) -> dict:
    """The ``activity`` of a replica answering a request, if one is. Several calls at once: the
    router sends a lone call to the less busy replica, the idle one, so it alone would not tell."""
    reports = [call.result() for call in [sampler.activity.remote() for _ in range(6)]]
    return max(reports, key=lambda report: report["answering"])


def test_a_replica_killed_mid_run_loses_no_request(service, demo):
    """Clients keep sending while one of the two model replicas is killed: every request is
    answered 200 with its own samples (those on the dead replica are run again on the other),
    none hangs; the metrics count the retries and every sample once, whichever replica made it.
    Four photos, each seconds of work, are sent first; the replica killed is one that reports a
    request in progress (so one photo surely dies with it); being seeded, the retried ones give
    the same bytes as the others."""
    need_detector()
    seeds = list(range(20, 26))
    expected = {seed: local_samples(demo, seed, 8) for seed in seeds}
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if "SERVE_REPLICA" in a["name"] and "cvdvae#Sampler" in a["name"]]
    assert len(replicas) == 2
    sampler = serve.get_deployment_handle("Sampler", app_name="cvdvae")
    before = metrics_text(service)
    photo = json.dumps({"image": b64(photo_jpeg(1000, 1000, faces=((50, 100, 500), (600, 300, 300)))),
                        "faces": True, "n": 2, "seed": 4}).encode()

    def photo_client():
        status, _, body = post(service + "/v1/samples", photo, accept="application/zip", timeout=120)
        return status, body

    def client(seed):
        outcomes = []
        while time.time() < stop_at:
            start = time.time()
            status, body = sample_json(service, image=b64(face_png(seed)), n=8, seed=seed, timeout=60)
            outcomes.append((status, body, time.time() - start))
        return seed, outcomes

    with ThreadPoolExecutor(len(seeds) + 4) as pool:
        photos = [pool.submit(photo_client) for _ in range(4)]
        give_up = time.time() + 60
        while not (activity := busiest(sampler))["answering"] and time.time() < give_up:
            time.sleep(0.02)
        assert activity["answering"], "no photo reached a model replica within 60 s"
        stop_at = time.time() + 5
        futures = [pool.submit(client, seed) for seed in seeds]
        wait_for(lambda: metric(metrics_text(service), "cvdvae_requests_total", status=200)
                 > metric(before, "cvdvae_requests_total", status=200), 60, "a client's first answer")
        busy = next(a for a in replicas if a["name"] == activity["replica"])
        ray.kill(ray.get_actor(busy["name"], namespace=busy["namespace"]), no_restart=True)
        results = [f.result(timeout=120) for f in futures]
        photo_answers = [f.result(timeout=180) for f in photos]
    assert [status for status, _ in photo_answers] == [200] * 4
    zips = [zipfile.ZipFile(io.BytesIO(body)) for _, body in photo_answers]
    for archive in zips:
        assert {name: archive.read(name) for name in archive.namelist() if name.endswith(".png")} == \
            {name: zips[0].read(name) for name in zips[0].namelist() if name.endswith(".png")}
    answered = 0
    for seed, outcomes in results:
        for status, body, seconds in outcomes:
            assert status == 200, (status, body)
            assert [base64.b64decode(s) for s in body["samples"]] == expected[seed] and seconds < 60
            answered += 1
    after = metrics_text(service)
    assert metric(after, "cvdvae_retries_total") > metric(before, "cvdvae_retries_total")
    assert metric(after, "cvdvae_requests_total", status=200) - metric(before, "cvdvae_requests_total", status=200) \
        == answered + 4
    assert metric(after, "cvdvae_samples_total") - metric(before, "cvdvae_samples_total") == 8 * answered + 4 * 2 * 2
    deadline = time.time() + 90  # Ray Serve starts a replica in the dead one's place
    while len([a for a in ray.util.list_named_actors(all_namespaces=True)
               if "SERVE_REPLICA" in a["name"] and "cvdvae#Sampler" in a["name"]]) < 2 and time.time() < deadline:
        time.sleep(1)
    assert sample_json(service, image=b64(face_png(1)), n=1)[0] == 200


def test_a_photo_gives_the_whole_photos_cvdvae_run_faces_and_the_api_make(service, demo, tmp_path):
    """``faces``: the service's whole photos and face samples, in JSON and in the zip, are pixel for
    pixel what ``cvdvae run --faces`` writes and what ``Pipeline.faces`` returns for the same photo
    and seed; the metrics count its samples as faces x n."""
    from runtime.cli.run import main as run_main
    from runtime.pipeline import Pipeline

    need_detector()
    photo_path = tmp_path / "astronaut.jpg"  # under the fixture's 200 kB body limit
    astronaut().save(photo_path, quality=90)
    photo = photo_jpeg(600, 400, faces=((20, 20, 300), (350, 60, 220)))
    (tmp_path / "two.jpg").write_bytes(photo)
    assert run_main([str(demo), "--input", str(photo_path), str(tmp_path / "two.jpg"), "--faces", "--n", "2",
                     "--seed", "3", "--summary", "--format", "png", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    pipe = Pipeline.from_pretrained(demo)
    for name, data in (("astronaut", photo_path.read_bytes()), ("two", photo)):
        before = metric(metrics_text(service), "cvdvae_samples_total")
        form, kind = multipart({"n": "2", "seed": "3", "faces": "true", "summary": "true", "format": "png"}, data)
        status, content_type, body = post(service + "/v1/samples", form, kind)
        assert status == 200, body[:300]
        answer = json.loads(body)
        api = pipe.faces(data, n=2, seed=3)
        assert answer["n"] == 2 and len(answer["faces"]) == len(api.faces) == (1 if name == "astronaut" else 2)
        assert metric(metrics_text(service), "cvdvae_samples_total") == before + 2 * len(api.faces)
        status, content_type, zipped = post(service + "/v1/samples", form, kind, accept="application/zip")
        archive = zipfile.ZipFile(io.BytesIO(zipped))
        assert json.loads(archive.read("request.json"))["faces"][0]["box"] == np.round(api.faces[0].box, 4).tolist()
        for k in range(2):
            written = np.asarray(Image.open(tmp_path / "run" / f"{name}_s3_{k:02d}.png"))
            for got in (base64.b64decode(answer["samples"][k]), archive.read(f"photo_s3_{k:02d}.png")):
                np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(got))), written)
            np.testing.assert_array_equal(written, api.photos[k])
            for j, face in enumerate(api.faces):
                written = np.asarray(Image.open(tmp_path / "run" / f"{name}_face{j}_s3_{k:02d}.png"))
                for got in (base64.b64decode(answer["faces"][j]["samples"][k]),
                            archive.read(f"face{j}_s3_{k:02d}.png")):
                    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(got))), written)
                np.testing.assert_array_equal(written, face.samples[k])
        assert [face["box"] for face in answer["faces"]] == [np.round(f.box, 4).tolist() for f in api.faces]
        for what in ("mean", "std"):  # the whole photos' spread, then each face's
            written = np.asarray(Image.open(tmp_path / "run" / f"{name}_s3_{what}.png"))
            for got in (base64.b64decode(answer[what]), archive.read(f"photo_s3_{what}.png")):
                np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(got))), written)
            for j in range(len(api.faces)):
                written = (tmp_path / "run" / f"{name}_face{j}_s3_{what}.png").read_bytes()
                assert base64.b64decode(answer["faces"][j][what]) == written == archive.read(f"face{j}_s3_{what}.png")
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "run" / f"{name}_s3_mean.png")),
                                      api.summary.mean_pixels())
    form, kind = multipart({"n": "1", "faces": "true"}, face_png(0, size=64))
    status, _, body = post(service + "/v1/samples", form, kind)
    assert_clean_error(status, body, 422, "no_face")


def test_each_kind_of_image_gives_the_pixels_run_and_the_api_give(service, demo, tmp_path):
    """One decoder: a 16-bit grey PNG (mid-grey was white through the service once), a palette, alpha,
    CMYK and an ICC-profiled image give the service the samples ``cvdvae run`` writes and the API returns."""
    from test_images import CASES

    from runtime.cli.run import main as run_main
    from runtime.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(demo)
    for kind in ("16-bit grey", "palette", "alpha", "CMYK", "ICC profile", "grey"):
        data, suffix, _, _ = CASES[kind]
        status, body = sample_json(service, image=b64(data), n=2, seed=9)
        assert status == 200, (kind, body)
        served = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(s)))) for s in body["samples"]])
        path = tmp_path / kind.replace(" ", "-") / f"face{suffix}"
        path.parent.mkdir()
        path.write_bytes(data)
        assert run_main([str(demo), "--input", str(path), "--n", "2", "--seed", "9", "--out", str(path.parent),
                         "--quiet"]) == 0
        written = np.stack([np.asarray(Image.open(path.parent / f"face_s9_{k:02d}.png")) for k in range(2)])
        np.testing.assert_array_equal(served, written, err_msg=kind)
        np.testing.assert_array_equal(served, pipe(data, n=2, seed=9).samples[0], err_msg=kind)


def test_a_broken_model_answers_500_non_finite_and_no_image(service):
    def png(size):
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(buffer, "PNG")
        return b64(buffer.getvalue())

    status, body = sample_json(service + "/broken", token=None, image=png(2), n=2, temperature=[0.5, 1.5])
    assert status == 500 and body["kind"] == "non_finite" and "samples" not in body
    assert "NaN/Inf" in body["error"] and not LEAKS.search(body["error"])
    status, body = sample_json(service + "/broken", token=None, image=png(2), n=2, temperature=0.5)
    assert status == 200 and len(body["samples"]) == 2  # the same model, finite where t < 1


def serve_cli(*args, env=None):
    from runtime.cli.serve import main

    return command(main, *args, env=env)


def test_the_config_for_serve_deploy_is_valid_and_names_only_the_tokens_variable(demo, tmp_path):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    secret = "a-token-that-must-not-be-written-1234"
    r = serve_cli(demo, "--replicas", "2", "--host", "0.0.0.0", "--cors-origin", ALLOWED_ORIGIN, "--max-queued", "9",
                  "--allowed-host", ALLOWED_HOST, "--allowed-host", "b.example", "--config-out", tmp_path / "serve.yaml",
                  env={"CVDVAE_SERVE_TOKEN": secret})
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "serve.yaml").read_text()
    assert secret not in text
    config = ServeDeploySchema.parse_obj(yaml.safe_load(text))
    (application,) = config.applications
    assert application.import_path == "runtime.serve.app:app_builder"
    deployments = {d.name: d for d in application.deployments}
    assert deployments["Sampler"].num_replicas == 2 and deployments["Sampler"].max_queued_requests == 9
    assert deployments["Ingress"].num_replicas == 1
    assert config.http_options.request_timeout_s > Limits().timeout_s
    rebuilt = ServeOptions.from_args(application.args)
    assert rebuilt.model == str(demo.resolve()) and rebuilt.token_env == "CVDVAE_SERVE_TOKEN"
    assert rebuilt.cors_origins == (ALLOWED_ORIGIN,) and rebuilt.limits == Limits(max_queued=9)
    assert rebuilt.host == "0.0.0.0" and rebuilt.allowed_hosts == (ALLOWED_HOST, "b.example")


def test_a_host_beyond_this_machine_needs_a_token_or_an_explicit_flag(demo, tmp_path):
    env = {"CVDVAE_SERVE_TOKEN": ""}
    r = serve_cli(demo, "--host", "0.0.0.0", "--config-out", tmp_path / "a.yaml", env=env)
    assert r.returncode == 2 and "--insecure-no-token" in r.stderr and not (tmp_path / "a.yaml").exists()
    assert "Traceback" not in r.stderr
    r = serve_cli(demo, "--host", "0.0.0.0", "--insecure-no-token", "--config-out", tmp_path / "b.yaml", env=env)
    assert r.returncode == 0, r.stderr
    assert yaml_args(tmp_path / "b.yaml")["token_env"] is None
    for host in ("127.0.0.1", "localhost", "::1"):
        r = serve_cli(demo, "--host", host, "--config-out", tmp_path / f"{host}.yaml", env=env)
        assert r.returncode == 0, (host, r.stderr)


def yaml_args(path):
    import yaml

    return yaml.safe_load(path.read_text())["applications"][0]["args"]


def test_a_page_rebound_to_this_address_is_refused_by_its_host_name(service, demo):
    """DNS rebinding: a page at evil.example:8000 whose name now resolves to 127.0.0.1 sends its own
    name as ``Host`` and as ``Origin``; refused (403) on the API, /metrics and /docs, with or
    without a token. A name the operator allowed, and the loopback names, pass."""
    good = json.dumps({"image": b64(face_png(4)), "n": 1, "seed": 4}).encode()
    evil = {"host": "evil.example:8000", "origin": "http://evil.example:8000"}
    for url, token in ((service, TOKEN), (service + "/big", None)):
        status, _, body = post(url + "/v1/samples", good, token=token, headers=evil)
        assert_clean_error(status, body, 403, "forbidden_host")
        for path in ("/metrics", "/docs", "/openapi.json", "/readyz", "/"):
            status, _, body = call(url + path, headers={**evil, "authorization": f"Bearer {TOKEN}"})
            assert_clean_error(status, body, 403, "forbidden_host")
    port = service.rsplit(":", 1)[1]
    for name in (ALLOWED_HOST, "localhost", "127.0.0.1", "[::1]"):
        status, _, body = post(service + "/big/v1/samples", good, token=None,
                               headers={"host": f"{name}:{port}", "origin": f"http://{name}:{port}"})
        assert status == 200, (name, body[:200])
    status, _, body = post(service + "/v1/samples", good, headers={"host": f"{ALLOWED_HOST}:{port}"})
    assert_clean_error(status, body, 403, "forbidden_host")  # allowed on /big only


def test_a_photo_whose_faces_tip_the_answer_over_its_budget_is_413(service):
    """625x500 at x4 is 5 MP a photo: n = 8 is 40 MP, the budget exactly, so the header passes;
    the two faces found add 8 x 2 x 32 x 32 pixels, and the answer is refused as too large (it once
    was a 500: the second check ran outside the library-error mapping)."""
    need_detector()
    photo = photo_jpeg(625, 500, faces=((20, 20, 300), (350, 60, 220)))
    status, body = sample_json(service, image=b64(photo), n=8, faces=True)
    assert_clean_error(status, body, 413, "too_large")
    assert "2 faces' samples" in body["error"]


def wait_for(condition, seconds, what):
    """``condition()``'s first true value, polled until ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.05)
    return value


def flaky_replicas_running() -> bool:
    """Both of ``/flaky``'s sampler replicas up: a test before may have killed one, and until Ray has
    started its successor (tens of seconds on a busy machine) requests wait for the other."""
    return serve.status().applications["flaky"].deployments["Sampler"].replica_states.get("RUNNING", 0) == 2


def flaky_metric(service, name, **labels):
    status, _, body = call(service + "/flaky/metrics", timeout=10)
    assert status == 200
    return metric(body.decode(), name, **labels)


def read_answer(url, fields):
    """(status, parsed JSON) of a request, or None when the connection was cut before a whole answer."""
    import http.client

    request = urllib.request.Request(url + "/v1/samples", json.dumps(fields).encode(),
                                     {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            status, data = r.status, r.read()
    except urllib.error.HTTPError as err:
        status, data = err.code, err.read()
    except (http.client.IncompleteRead, ConnectionError):
        return None
    try:
        return status, json.loads(data)
    except ValueError:
        return None


def parses(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def read_streamed(url, fields, mark: bytes, on_mark) -> tuple[int, bytes, bool]:
    """(status, body, whether it ended cleanly) of a request whose answer is read as it streams;
    ``on_mark()`` is called once the body holds ``mark``."""
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    status, body, marked = 0, b"", False
    try:
        connection.request("POST", where.path + "/v1/samples", json.dumps(fields).encode(),
                           {"content-type": "application/json"})
        response = connection.getresponse()
        status = response.status
        while chunk := response.read1(65536):
            body += chunk
            if not marked and mark in body:
                marked = True
                on_mark()
        return status, body, True
    except (http.client.IncompleteRead, ConnectionError):
        return status, body, False
    finally:
        connection.close()


@pytest.mark.parametrize("seed", [5, 6])
def test_a_retried_stream_is_the_same_answer_or_none(service, seed):
    """The replica is killed (as a lost node) once the client has the head and one of two photos;
    run again, it starts with a 503 (seed 5) or sends other bytes (seed 6). The client never gets
    an answer that looks whole: the connection is cut."""
    first_photo = base64.b64encode(face_png(0))
    status, body, whole = read_streamed(service + "/flaky", {"image": b64(face_png(0)), "n": 2, "seed": seed},
                                        first_photo, (FLAKY_STATE / f"passed-{seed}").touch)
    assert status == 200 and first_photo in body, "the first photo never reached the client"
    assert lines(FLAKY_STATE / f"attempt-{seed}") == 2, "the request was not run again"
    assert not (whole and parses(body)), body[-200:]


def test_a_request_that_crashes_its_replica_is_not_run_again(service):
    """Seed 13 makes the replica's process exit once the client has the head and one of two
    photos: the connection is cut, and the other replica never sees the request (one replica
    lost, not two). It exits after its head, not at once: Ray Serve itself sends a request on to
    another replica when its replica dies before acknowledging it (in a soak under a CPU burner
    an immediate exit cost three replicas), which is out of the ingress's hands."""
    before = flaky_metric(service, "cvdvae_retries_total")
    first_photo = base64.b64encode(face_png(0))
    status, body, whole = read_streamed(service + "/flaky", {"image": b64(face_png(0)), "n": 2, "seed": 13},
                                        first_photo, (FLAKY_STATE / "passed-13").touch)
    assert status == 200 and first_photo in body, "the first photo never reached the client"
    assert not (whole and parses(body)), body[-200:]
    assert lines(FLAKY_STATE / "attempt-13") == 1 and lines(FLAKY_STATE / "deaths") == 1
    assert flaky_metric(service, "cvdvae_retries_total") == before
    wait_ready(service + "/flaky/readyz")


def test_a_request_whose_client_goes_away_leaves_the_queue_depth(service):
    """A client that closes its connection while its request waits: the in-flight gauge goes back."""
    wait_for(flaky_replicas_running, 120, "both replicas running")
    assert flaky_metric(service, "cvdvae_queue_depth") == 0
    body = json.dumps({"image": b64(face_png(0)), "n": 1, "seed": 3}).encode()
    with socket.create_connection(("127.0.0.1", int(service.rsplit(":", 1)[1])), timeout=30) as sock:
        sock.sendall(b"POST /flaky/v1/samples HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_for(lambda: flaky_metric(service, "cvdvae_queue_depth") == 1, 20, "the request in flight")
    wait_for(lambda: flaky_metric(service, "cvdvae_queue_depth") == 0, 20, "the gauge back to 0")


def test_readyz_asks_a_replica_at_most_once_a_second(service):
    wait_ready(service + "/flaky/readyz")
    before, start = lines(FLAKY_STATE / "describes"), time.monotonic()
    for _ in range(10):
        assert call(service + "/flaky/readyz")[0] == 200
    seconds = time.monotonic() - start
    assert lines(FLAKY_STATE / "describes") - before <= 1 + seconds, seconds


def test_joining_a_cluster_whose_serve_listens_beyond_this_machine_needs_a_token(service, monkeypatch):
    """``--ray-address``: a Serve already running there keeps its proxy, whatever ``--host`` asks; its
    host is read from the cluster (here the fixture's, on 127.0.0.1), and one beyond this machine is
    refused without a token or --insecure-no-token (faked: tests listen on loopback only)."""
    import typer

    from runtime.cli import serve as command

    port = int(service.rsplit(":", 1)[1])
    assert command.live_proxy() == ("127.0.0.1", port)
    options = ServeOptions("model", host="0.0.0.0")
    checked, live_port = command.check_live_proxy(options, 8000, insecure_no_token=False)
    assert (checked.host, live_port) == ("127.0.0.1", port)
    monkeypatch.setattr(command, "live_proxy", lambda: ("0.0.0.0", 8000))
    with pytest.raises(typer.BadParameter, match="already listens on 0.0.0.0:8000"):
        command.check_live_proxy(ServeOptions("model"), 8000, insecure_no_token=False)
    assert command.check_live_proxy(ServeOptions("model", token_env=TOKEN_ENV), 8000, False)[0].host == "0.0.0.0"
    assert command.check_live_proxy(ServeOptions("model"), 8000, insecure_no_token=True)[0].host == "0.0.0.0"




def test_large_json_bodies_do_not_hold_the_ingress(service):
    """Four 8 MB JSON bodies (a 6 MB image in base64, not a picture: 400 once read) in flight at once,
    round after round: /healthz's median is less than ``HELD_LOOP_S`` more than its median without
    them, measured just before (0.011 s more on a quiet machine, 0.13 s in CI). Their bracket check once ran a regular expression over each body,
    holding the ingress's GIL for seconds: tests/test_serve_costs.py measures that hold directly;
    here the proxy's own work on a busy machine makes single answers slow too, so only the median
    is asserted."""
    body = json.dumps({"image": b64(np.random.default_rng(0).bytes(6_000_000)), "n": 1}).encode()
    assert len(body) <= Limits().max_body_bytes
    idle = []
    for _ in range(20):
        start = time.monotonic()
        assert call(service + "/big/healthz", timeout=30)[0] == 200
        idle.append(time.monotonic() - start)
    health, statuses = [], []
    with ThreadPoolExecutor(4) as pool:
        while len(health) < 20:
            sent = [pool.submit(post, service + "/big/v1/samples", body, token=None, timeout=120) for _ in range(4)]
            while not all(f.done() for f in sent):
                start = time.monotonic()
                assert call(service + "/big/healthz", timeout=30)[0] == 200
                health.append(time.monotonic() - start)
            statuses += [f.result()[0] for f in sent]
    assert set(statuses) == {400}, statuses
    assert np.median(health) < HELD_LOOP_S + np.median(idle), (health, idle)


def test_the_bytes_in_flight_are_capped_not_only_the_requests(service):
    """``/flaky`` holds at most 350 kB of bodies at once: a client that declared 200 kB and stalls
    holds them, so a second of 199 kB is refused at once (503, Retry-After) while a small one
    passes; once the stalled client is gone, the large one is read (and refused for its field)."""
    port = int(service.rsplit(":", 1)[1])
    large = json.dumps({"image": b64(face_png(5)), "n": 1, "seed": 4, "pad": ""}).encode()
    large = large.replace(b'"pad": ""', b'"pad": "' + b"x" * (199_000 - len(large)) + b'"')
    held = lambda: flaky_metric(service, "cvdvae_body_bytes_in_flight")  # noqa: E731
    wait_for(flaky_replicas_running, 120, "both replicas running")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /flaky/v1/samples HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 200000\r\n\r\n{")
        wait_for(lambda: held() == 200_000, 20, "the stalled body's bytes held")
        status, headers, body = call(service + "/flaky/v1/samples", large, {"content-type": "application/json"})
        assert_clean_error(status, body, 503, "busy")
        assert headers["retry-after"]
        assert read_answer(service + "/flaky", {"image": b64(face_png(4)), "n": 2, "seed": 4})[0] == 200
    wait_for(lambda: held() == 0, 20, "the bytes given back")
    status, _, body = call(service + "/flaky/v1/samples", large, {"content-type": "application/json"})
    assert_clean_error(status, body, 400, "bad_request")  # read and parsed: "pad" is no field
