"""``cvdvae serve`` on Ray Serve (2 CPUs, no dashboard), on the demo model: the API end to end,
the limits, batching that never changes a request's bytes, /metrics, a replica killed
mid-run, clean shutdown. The batching core is also checked without Ray."""

import base64
import io
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import REPO, copy_export, nan_model
from PIL import Image

from runtime.backends import open_backend
from runtime.model_files import locate
from runtime.sampling import Job, sample_jobs
from runtime.serve.requests import Limits

ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install -e '.[serve]')")
from ray import serve  # noqa: E402

from runtime.serve.app import ServeOptions, build_app  # noqa: E402

TOKEN = "s3cret"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def face_png(seed, size=8):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def demo(tmp_path_factory, demo_export):
    return copy_export(demo_export, tmp_path_factory.mktemp("serve") / "demo")


@pytest.fixture(scope="module")
def service(demo):
    """Two applications on one local Ray: the demo model with a token and small limits, and the
    same model with a timeout no request can meet."""
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    limits = Limits(max_body_bytes=200_000, max_image_pixels=1_000_000, max_n=8, timeout_s=60)
    options = ServeOptions(str(demo), max_batch_size=8, batch_wait_s=0.05, token=TOKEN, limits=limits)
    serve.run(build_app(options), name="cvdvae", route_prefix="/", blocking=False)
    slow = ServeOptions(str(demo), limits=Limits(timeout_s=1e-4))
    serve.run(build_app(slow), name="slow", route_prefix="/slow", blocking=False)
    broken = ServeOptions(str(nan_model(demo.parent / "broken")))  # t >= 1 gives NaN/Inf
    serve.run(build_app(broken, cpus_per_replica=0), name="broken", route_prefix="/broken", blocking=False)
    url = f"http://127.0.0.1:{port}"
    for app in ("", "/slow", "/broken"):
        wait_ready(url + app + "/readyz")
    yield url
    serve.shutdown()
    ray.shutdown()
    with pytest.raises(OSError):  # clean shutdown: nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


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


def post(url, body: bytes, content_type="application/json", token=TOKEN, accept=None, timeout=60):
    headers = {"content-type": content_type}
    if token:
        headers["authorization"] = f"Bearer {token}"
    if accept:
        headers["accept"] = accept
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=timeout) as r:
            return r.status, r.headers.get("content-type"), r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("content-type"), err.read()


def sample_json(url, token=TOKEN, timeout=60, **fields):
    status, content_type, body = post(url + "/v1/samples", json.dumps(fields).encode(), token=token, timeout=timeout)
    if content_type != "application/json":  # Ray's proxy answers a dead replica in plain text
        return status, {"error": body.decode(errors="replace"), "kind": None}
    return status, json.loads(body)


def multipart(fields: dict, image: bytes):
    boundary = "cvdvae-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="face.png"\r\n'
                 f"Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def b64(data):
    return base64.b64encode(data).decode()


def local_samples(demo, seed, n, temperature=0.8):
    """What ``cvdvae run`` computes for this face, as PNG bytes: the oracle for the service."""
    from runtime.images.outputs import to_uint8
    from runtime.serve.app import png_bytes

    backend = open_backend(locate(demo), "auto")
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


# ---------------------------------------------------------------- the API
def test_json_request_gives_the_local_samples(service, demo):
    status, body = sample_json(service, image=b64(face_png(3)), n=3, seed=3)
    assert status == 200 and body["n"] == 3 and body["seed"] == 3 and body["temperatures"] == [0.8] * 3
    assert body["model"].startswith("cvdvae-")
    assert [base64.b64decode(s) for s in body["samples"]] == local_samples(demo, 3, 3)


def test_multipart_request_and_zip_answer(service, demo):
    data, kind = multipart({"n": "2", "seed": "4", "temperature": "0.8,0.8"}, face_png(4))
    status, content_type, body = post(service + "/v1/samples", data, kind, accept="application/zip")
    assert status == 200 and content_type == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.namelist() == ["sample_s4_00.png", "sample_s4_01.png", "request.json"]
    assert [archive.read(f"sample_s4_{k:02d}.png") for k in range(2)] == local_samples(demo, 4, 2)


def test_consistent_samples_are_the_models_projection(service, demo):
    """``consistent`` applies the exact LR-consistency projection: PyTorch's (cvdvae.degradation)
    applied to the plain samples gives the same PNGs, to one 8-bit level."""
    import torch

    from cvdvae.degradation import bicubic_degradation
    from runtime.images.outputs import to_uint8

    status, body = sample_json(service, image=b64(face_png(6)), n=2, seed=6, consistent=True, temperature=[0.5, 1.0])
    assert status == 200 and body["consistent"] is True
    backend = open_backend(locate(demo), "auto")
    lr = np.asarray(Image.open(io.BytesIO(face_png(6))).convert("RGB")).transpose(2, 0, 1).astype(np.float32)
    plain = torch.from_numpy(backend.sample(lr[None], 6, 0, np.array([0.5, 1.0], np.float32)).samples[0]).double()
    projected = bicubic_degradation(32, 4).project(plain * 255, torch.from_numpy(lr).double()) / 255
    for sample, expected in zip(body["samples"], projected.clamp(0, 1).float().numpy()):
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(sample)))).astype(int)
        assert np.abs(got - to_uint8(expected)).max() <= 1
        assert np.abs(got - to_uint8(plain[0].float().numpy())).max() > 10  # the projection did change them


def test_requests_batched_together_get_their_own_bytes(service):
    """16 requests at once (different seeds, n and temperatures) equal the same requests one by
    one; batches of several requests did happen (the metrics say so)."""
    cases = [dict(image=b64(face_png(i)), n=1 + i % 3, seed=100 + i, temperature=0.3 + 0.1 * (i % 4))
             for i in range(16)]
    alone = [sample_json(service, **case)[1]["samples"] for case in cases]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda case: sample_json(service, **case)[1]["samples"], cases))
    assert together == alone
    metrics = metrics_text(service)
    assert float(metric(metrics, "cvdvae_batch_requests_sum")) > float(metric(metrics, "cvdvae_batch_requests_count"))


def metrics_text(service):
    request = urllib.request.Request(service + "/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.headers["content-type"].startswith("text/plain")
        return r.read().decode()


def metric(text, name, **labels):
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return line.rsplit(" ", 1)[1]
    return "0"


@pytest.mark.parametrize("fields, token, status, kind", [
    (dict(n=2), TOKEN, 400, "bad_request"),                                   # no image
    (dict(image="not base64!", n=2), TOKEN, 400, "bad_request"),
    (dict(image=b64(b"not a png"), n=2), TOKEN, 400, "bad_image"),
    (dict(image=b64(face_png(1, size=9)), n=2), TOKEN, 422, "wrong_size"),
    (dict(image=b64(face_png(1)), n=9), TOKEN, 413, "too_large"),               # over max_n = 8
    (dict(image=b64(face_png(1)), n=2, temperature=-1), TOKEN, 400, "bad_request"),
    (dict(image=b64(face_png(1)), n=2, temperature=[0.1, 0.2, 0.3]), TOKEN, 400, "bad_request"),
    (dict(image=b64(face_png(1)), n=2, seed=2**64), TOKEN, 400, "bad_request"),
    (dict(image=b64(face_png(1)), n=2, colour="blue"), TOKEN, 400, "bad_request"),
    (dict(image=b64(face_png(1)), n=2), None, 401, "unauthorized"),
    (dict(image=b64(face_png(1)), n=2), "wrong", 401, "unauthorized"),
])
def test_bad_requests_get_one_line_and_their_status(service, fields, token, status, kind):
    before = int(metric(metrics_text(service), "cvdvae_errors_total", kind=kind))
    got, body = sample_json(service, token=token, **fields)
    assert got == status and body["kind"] == kind and "\n" not in body["error"] and body["error"]
    assert int(metric(metrics_text(service), "cvdvae_errors_total", kind=kind)) == before + 1


def test_body_and_pixel_limits(service):
    status, _, body = post(service + "/v1/samples", b"{" + b" " * 300_000 + b"}")
    assert status == 413 and json.loads(body)["kind"] == "too_large"
    buffer = io.BytesIO()
    Image.new("RGB", (1500, 1500)).save(buffer, "PNG")  # 2.25 MP, small on the wire, over the 1 MP limit
    status, body = sample_json(service, image=b64(buffer.getvalue()), n=1)
    assert status == 413 and "pixels" in body["error"]


def test_a_timeout_is_504_and_the_service_goes_on(service):
    status, body = sample_json(service + "/slow", token=None, image=b64(face_png(1)), n=2)
    assert status == 504 and body["kind"] == "timeout"
    assert sample_json(service, image=b64(face_png(1)), n=1)[0] == 200


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


def test_health_ready_page_openapi_and_metrics_counts(service):
    with urllib.request.urlopen(service + "/healthz", timeout=10) as r:
        assert json.loads(r.read()) == {"status": "ok"}
    ready = wait_ready(service + "/readyz")
    assert ready["lr_size"] == 8 and ready["hr_size"] == 32 and ready["max_n"] == 8 and ready["conditional"]
    with urllib.request.urlopen(service + "/", timeout=10) as r:
        assert r.headers["content-type"].startswith("text/html") and b"<form" in r.read()
    with urllib.request.urlopen(service + "/openapi.json", timeout=10) as r:
        assert "/v1/samples" in json.loads(r.read())["paths"]
    before = metrics_text(service)
    assert sample_json(service, image=b64(face_png(2)), n=3)[0] == 200
    after = metrics_text(service)
    assert int(metric(after, "cvdvae_requests_total", status=200)) == int(metric(before, "cvdvae_requests_total",
                                                                                 status=200)) + 1
    assert int(metric(after, "cvdvae_samples_total")) == int(metric(before, "cvdvae_samples_total")) + 3
    assert metric(after, "cvdvae_queue_depth") == "0"


def test_a_replica_killed_mid_run_fails_requests_cleanly_and_comes_back(service, demo):
    """Clients keep sending while the replica is killed: every request ends (5xx or its own
    samples), none hangs, none gets another request's images; Ray Serve starts a new replica."""
    seeds = list(range(20, 26))
    expected = {seed: local_samples(demo, seed, 8) for seed in seeds}
    (replica,) = [a for a in ray.util.list_named_actors(all_namespaces=True)
                  if "SERVE_REPLICA" in a["name"] and "cvdvae#Sampler" in a["name"]]
    stop_at = time.time() + 4

    def client(seed):
        outcomes = []
        while time.time() < stop_at:
            start = time.time()
            status, body = sample_json(service, image=b64(face_png(seed)), n=8, seed=seed, timeout=60)
            outcomes.append((status, body, time.time() - start))
        return seed, outcomes

    with ThreadPoolExecutor(len(seeds)) as pool:
        futures = [pool.submit(client, seed) for seed in seeds]
        time.sleep(1)
        ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
        results = [f.result(timeout=120) for f in futures]
    statuses = []
    for seed, outcomes in results:
        for status, body, seconds in outcomes:
            assert seconds < 60
            if status == 200:
                assert [base64.b64decode(s) for s in body["samples"]] == expected[seed]
            else:
                assert status in (500, 502, 503), (status, body)
            statuses.append(status)
    assert 200 in statuses and any(s != 200 for s in statuses), statuses
    deadline = time.time() + 90
    while (status := sample_json(service, image=b64(face_png(1)), n=1)[0]) != 200 and time.time() < deadline:
        time.sleep(1)
    assert status == 200


def test_a_photo_gives_the_whole_photos_cvdvae_run_faces_and_the_api_make(service, demo, tmp_path):
    """``faces``: the service's whole photos and face samples are, pixel for pixel, what ``cvdvae run
    --faces`` writes and what ``Pipeline.faces`` returns for the same photo and seed."""
    from cvdvae.hub.home import cvdvae_home
    from runtime.cli.run import main as run_main
    from runtime.pipeline import Pipeline

    if not (cvdvae_home() / "mtcnn" / "onet.onnx").is_file():
        pytest.skip("MTCNN graphs not fetched (cvdvae fetch mtcnn)")
    astronaut = __import__("pathlib").Path(__import__("skimage").__file__).parent / "data" / "astronaut.png"
    photo_path = tmp_path / "astronaut.jpg"  # under the fixture's 200 kB body limit
    Image.open(astronaut).convert("RGB").save(photo_path, quality=90)
    data, kind = multipart({"n": "2", "seed": "3", "faces": "true"}, photo_path.read_bytes())
    status, content_type, body = post(service + "/v1/samples", data, kind)
    assert status == 200, body[:300]
    answer = json.loads(body)
    assert answer["n"] == 2 and len(answer["faces"]) == 1 and answer["faces"][0]["mode"] == "hr"
    assert run_main([str(demo), "--input", str(photo_path), "--faces", "--n", "2", "--seed", "3", "--out",
                     str(tmp_path / "run"), "--quiet"]) == 0
    api = Pipeline.from_pretrained(demo).faces(photo_path.read_bytes(), n=2, seed=3)
    for k in range(2):
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["samples"][k]))))
        np.testing.assert_array_equal(got, np.asarray(Image.open(tmp_path / "run" / f"astronaut_s3_{k:02d}.png")))
        np.testing.assert_array_equal(got, api.photos[k])
        face = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["faces"][0]["samples"][k]))))
        written = tmp_path / "run" / f"astronaut_face0_s3_{k:02d}.png"
        np.testing.assert_array_equal(face, np.asarray(Image.open(written)))
        np.testing.assert_array_equal(face, api.faces[0].samples[k])
    assert answer["faces"][0]["box"] == np.round(api.faces[0].box, 4).tolist()
    data, kind = multipart({"n": "1", "faces": "true"}, face_png(0, size=64))
    status, _, body = post(service + "/v1/samples", data, kind)
    assert status == 422 and json.loads(body)["kind"] == "no_face"


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
    assert "NaN/Inf" in body["error"]
    status, body = sample_json(service + "/broken", token=None, image=png(2), n=2, temperature=0.5)
    assert status == 200 and len(body["samples"]) == 2  # the same model, finite where t < 1


@pytest.mark.parametrize("fields, kind", [({"temperature": 1e39}, "bad_request"), ({"temperature": 10.5}, "bad_request"),
                                          ({"temperature": True}, "bad_request"),
                                          ({"temperature": [0.5, False]}, "bad_request")])
def test_a_temperature_out_of_range_is_a_400(service, fields, kind):
    status, body = sample_json(service, image=b64(face_png(1)), n=2, **fields)
    assert status == 400 and body["kind"] == kind and "temperature" in body["error"]


def test_the_config_for_serve_deploy_is_valid(demo, tmp_path):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    r = __import__("subprocess").run([sys.executable, "-m", "runtime.cli.serve", str(demo), "--replicas", "2",
                                      "--config-out", str(tmp_path / "serve.yaml")], capture_output=True, text=True,
                                     cwd=REPO)
    assert r.returncode == 0, r.stderr
    config = ServeDeploySchema.parse_obj(yaml.safe_load((tmp_path / "serve.yaml").read_text()))
    (application,) = config.applications
    assert application.import_path == "runtime.serve.app:app_builder" and application.deployments[0].num_replicas == 2
    rebuilt = ServeOptions.from_args(application.args)
    assert rebuilt.model == str(demo.resolve()) and rebuilt.limits == Limits()
