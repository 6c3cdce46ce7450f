"""Triton Inference Server: the model repository an export writes, parsed with Triton's own config
schema (shipped in tritonclient), and the example client (examples/triton_client.py): its requests
are the runtime's feeds, and the graph answers them with the runtime's faces."""

import hashlib
import importlib.util
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import REPO, io_signature
from PIL import Image
from test_engine_build import gpu  # noqa: F401 - TensorRT and a GPU, faked (tests/fakes.py)
from test_fetch import tiny_prior

from cvdvae.errors import CVDVAEError
from cvdvae.random_weights import random_model
from export import metadata
from export.triton import write_repository
from runtime.backends.host_memory import HostCalls
from runtime.backends.onnxruntime import OnnxRuntimeBackend
from runtime.timings import Timings
from runtime.cli.app import main as cvdvae
from runtime.cli.export import main as export_main
from runtime.cli.triton import main as triton_main
from runtime.model_files import locate

ort = pytest.importorskip("onnxruntime")


def load_client():
    spec = importlib.util.spec_from_file_location("triton_client", REPO / "examples" / "triton_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


client = load_client()


@pytest.fixture(scope="module")
def schema():
    """Triton's model_config_pb2, loaded from its file: the package ``tritonclient.grpc`` needs the
    grpc extra, the schema itself only protobuf."""
    tritonclient = pytest.importorskip("tritonclient", reason="pip install 'tritonclient[http]' (the dev extra)")
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(schema, model_dir: Path):
    from google.protobuf import text_format

    return text_format.Parse((model_dir / "config.pbtxt").read_text(), schema.ModelConfig())


def files_in(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def contract_io(meta):
    """docs/contract/graph.md (both graphs) with B taken off, as Triton wants it: n is dynamic (-1)."""
    lr, big, dim = meta["lr_size"], meta["hr_size"], meta["noise_dim"]
    inputs = ([("lr", [3, lr, lr])] if meta["conditional"] else []) + [("noise", [-1, dim]), ("temperature", [-1])]
    return inputs, [("sr", [-1, 3, big, big]), ("non_finite", [-1])]


def check_config(schema, config, meta, platform, max_batch, delay_us=2000):
    assert config.platform == platform and config.max_batch_size == max_batch
    inputs, outputs = contract_io(meta)
    assert [(t.name, list(t.dims)) for t in config.input] == inputs
    assert [(t.name, list(t.dims)) for t in config.output] == outputs
    assert {t.data_type for t in [*config.input, *config.output]} == {schema.TYPE_FP32}
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert config.dynamic_batching.max_queue_delay_microseconds == delay_us
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters["cvdvae_noise_dim"] == str(meta["noise_dim"])
    return parameters


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A demo export with a profile from flags (B <= 3, n <= 4), and the repository that
    cvdvae export --triton-repo wrote for it."""
    root = tmp_path_factory.mktemp("triton")
    assert export_main(["--demo", "--out", str(root / "demo"), "--onnx-only", "--quiet", "--no-validate",
                        "--max-batch", "3", "--max-n", "4", "--triton-repo", str(root / "repo")]) == 0
    return root / "demo", root / "repo"


@pytest.fixture(scope="module")
def prior_folder(tmp_path_factory):
    """A prior-only export folder: the metadata export writes for a tiny prior, beside stand-in graph
    bytes (tracing a second graph would double this file's time; nothing here runs the prior)."""
    folder = tmp_path_factory.mktemp("prior") / "prior"
    folder.mkdir()
    graph = b"stand-in for a prior-only model.onnx"
    (folder / "model.onnx").write_bytes(graph)
    meta = metadata.graph_metadata(random_model(tiny_prior()), "fp32", False, "0" * 64)
    meta.update(onnx_sha256=hashlib.sha256(graph).hexdigest(), profile={"source": "default"})
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def with_engine(folder: Path, tmp_path: Path, plan: bytes = b"a TensorRT plan", **profile) -> Path:
    """A copy of ``folder`` with an engine.plan recorded as cvdvae export --engine-only records it."""
    copy = tmp_path / "with-engine"
    shutil.copytree(folder, copy)
    (copy / "engine.plan").write_bytes(plan)
    meta = json.loads((copy / "meta.json").read_text())
    meta["engine"] = {"tensorrt_version": "10.13.0.35", "gpu": "Fake GPU", "compute_capability": "9.0",
                      "profile": {"min_batch": 1, "opt_batch": 1, "max_batch": 4, "min_n": 1, "opt_n": 2,
                                  "max_n": 2, **profile},
                      "plan_sha256": hashlib.sha256(plan).hexdigest()}
    (copy / "meta.json").write_text(json.dumps(meta))
    return copy


# --------------------------------------------------------------------------- the repository


def test_export_writes_an_onnx_repository_triton_accepts(exported, schema):
    folder, repo = exported
    meta = json.loads((folder / "meta.json").read_text())
    model_dir = repo / "cvdvae"
    assert files_in(model_dir) == ["1/model.onnx", "config.pbtxt"]
    assert (model_dir / "1" / "model.onnx").read_bytes() == (folder / "model.onnx").read_bytes()
    config = parse(schema, model_dir)
    assert config.name == "cvdvae"
    parameters = check_config(schema, config, meta, "onnxruntime_onnx", max_batch=3)  # the export's --max-batch
    assert parameters["cvdvae_model_sha256"] == meta["onnx_sha256"] and parameters["cvdvae_max_n"] == "4"
    assert [g.kind for g in config.instance_group] == [schema.ModelInstanceGroup.KIND_AUTO]
    # Triton's dims plus the batch dimension are the graph's own declared I/O.
    graph = io_signature(onnx.load(str(model_dir / "1" / "model.onnx")))
    for tensor in [*config.input, *config.output]:
        dtype, dims = graph[tensor.name]
        assert dtype == "FLOAT" and dims[0] == "B"
        assert list(tensor.dims) == [-1 if d == "n" else d for d in dims[1:]]


def test_a_prior_only_repository_has_no_lr(prior_folder, tmp_path, schema):
    target = write_repository(prior_folder, tmp_path / "repo", name="prior")
    assert target == tmp_path / "repo" / "prior"
    meta = json.loads((prior_folder / "meta.json").read_text())
    config = parse(schema, target)
    # The default profile documented for export (B 1..2, n 1..8): 2 images per call.
    check_config(schema, config, meta, "onnxruntime_onnx", max_batch=2)
    assert "lr" not in [t.name for t in config.input]


def test_an_engine_is_served_by_the_tensorrt_backend(exported, tmp_path, schema):
    folder = with_engine(exported[0], tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    target = write_repository(folder, tmp_path / "repo", max_queue_delay_us=500)
    assert files_in(target) == ["1/model.plan", "config.pbtxt"]
    assert (target / "1" / "model.plan").read_bytes() == (folder / "engine.plan").read_bytes()
    config = parse(schema, target)
    parameters = check_config(schema, config, meta, "tensorrt_plan", max_batch=4, delay_us=500)  # the built profile
    assert [g.kind for g in config.instance_group] == [schema.ModelInstanceGroup.KIND_GPU]
    assert parameters["cvdvae_model_sha256"] == meta["engine"]["plan_sha256"]
    assert parameters["cvdvae_max_n"] == "2" and parameters["cvdvae_tensorrt_version"] == "10.13.0.35"
    # The ONNX variant of the same folder, on request; and a smaller batch than the engine's.
    onnx_dir = write_repository(folder, tmp_path / "repo", name="onnx", prefer="onnx")
    check_config(schema, parse(schema, onnx_dir), meta, "onnxruntime_onnx", max_batch=3)
    assert files_in(onnx_dir) == ["1/model.onnx", "config.pbtxt"]
    small = write_repository(folder, tmp_path / "repo", name="small", max_batch=1)
    assert parse(schema, small).max_batch_size == 1


def test_engine_only_then_the_repository_serves_the_new_plan(exported, tmp_path, gpu, schema):
    folder = tmp_path / "demo"
    shutil.copytree(exported[0], folder)
    assert export_main(["--engine-only", str(folder), "--quiet", "--no-validate",
                        "--triton-repo", str(tmp_path / "repo"), "--triton-name", "x4"]) == 0
    meta = json.loads((folder / "meta.json").read_text())
    target = tmp_path / "repo" / "x4"
    assert (target / "1" / "model.plan").read_bytes() == (folder / "engine.plan").read_bytes()
    # The engine was built with the export's recorded profile (B <= 3), which the config takes.
    assert meta["engine"]["profile"]["max_batch"] == 3
    check_config(schema, parse(schema, target), meta, "tensorrt_plan", max_batch=3)


def test_what_triton_would_refuse_or_should_not_serve_is_refused(exported, tmp_path):
    folder = with_engine(exported[0], tmp_path)
    with pytest.raises(CVDVAEError, match="at most 4 images per call"):  # Triton refuses max-batch > the engine's
        write_repository(folder, tmp_path / "repo", max_batch=5)
    (folder / "engine.plan").write_bytes(b"changed after the build")
    with pytest.raises(CVDVAEError, match="does not match its meta.json"):
        write_repository(folder, tmp_path / "repo")
    meta = json.loads((folder / "meta.json").read_text())
    del meta["engine"]
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CVDVAEError, match="not recorded in meta.json"):
        write_repository(folder, tmp_path / "repo")
    assert not (tmp_path / "repo" / "cvdvae").exists()  # nothing half-written
    with pytest.raises(CVDVAEError, match="model name"):
        write_repository(exported[0], tmp_path / "repo", name="../escape")


def test_an_existing_repository_is_kept_without_overwrite(exported, tmp_path, capsys, schema):
    folder, _ = exported
    repo = tmp_path / "repo"
    assert triton_main([str(folder), "--out", str(repo), "--quiet"]) == 0
    before = (repo / "cvdvae" / "config.pbtxt").read_bytes()
    assert triton_main([str(folder), "--out", str(repo), "--max-batch", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists" in err[0] and "--overwrite" in err[0]
    assert (repo / "cvdvae" / "config.pbtxt").read_bytes() == before
    assert triton_main([str(folder), "--out", str(repo), "--max-batch", "1", "--overwrite", "--quiet"]) == 0
    assert parse(schema, repo / "cvdvae").max_batch_size == 1
    # cvdvae export refuses before any work: no export folder appears either.
    assert export_main(["--demo", "--out", str(tmp_path / "new"), "--onnx-only", "--quiet",
                        "--triton-repo", str(repo)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and not (tmp_path / "new").exists()
    assert triton_main([str(folder), "--out", str(repo), "--name", "a/b"]) == 2
    assert "'--name'" in capsys.readouterr().err


# ------------------------------------------------------------------------------- the client


def runtime_feeds(files, lr, seed, temperatures):
    """What the runtime's host backends feed the graph for one image."""
    fed = {}

    def run(feeds):
        fed.update(feeds)
        batch, n = feeds["temperature"].shape
        return np.zeros((batch, n, 3, 1, 1), np.float32), None

    HostCalls(files, run, Timings()).sample_rows(None if lr is None else lr[None].astype(np.float32), [seed], 0,
                                                 np.asarray(temperatures, np.float32)[None])
    return fed


@pytest.mark.parametrize("which", ["conditional", "prior"])
def test_the_client_sends_the_contract_and_the_runtime_feeds(which, exported, prior_folder):
    files = locate(exported[0] if which == "conditional" else prior_folder)
    meta = files.meta
    lr_size, dim, temperatures = meta["lr_size"], meta["noise_dim"], [0.8, 0.0, 1.2]
    lr = np.random.default_rng(0).integers(0, 256, (3, lr_size, lr_size), dtype=np.uint8) if lr_size else None
    inputs = client.build_inputs(lr, 11, 3, dim, temperatures)
    expected = {"noise": (1, 3, dim), "temperature": (1, 3), **({"lr": (1, 3, lr_size, lr_size)} if lr_size else {})}
    assert {k: v.shape for k, v in inputs.items()} == expected
    assert all(v.dtype == np.float32 for v in inputs.values())
    fed = runtime_feeds(files, lr, 11, temperatures)
    assert sorted(fed) == sorted(inputs)
    for name, array in inputs.items():
        np.testing.assert_array_equal(array, fed[name], err_msg=name)
    assert np.array_equal(client.build_inputs(lr, 11, 3, dim, 0.5)["temperature"], np.full((1, 3), 0.5, np.float32))
    with pytest.raises(ValueError, match="2 temperatures for 3 samples"):
        client.build_inputs(lr, 11, 3, dim, [0.1, 0.2])


def test_the_served_graph_gives_the_runtimes_faces_for_a_seed(exported):
    """ONNX Runtime on the repository's model.onnx with the client's request = the runtime's backend."""
    folder, repo = exported
    session = ort.InferenceSession(str(repo / "cvdvae" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    backend = OnnxRuntimeBackend(locate(folder), device="cpu")
    lr = np.random.default_rng(1).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    temperatures = np.array([0.8, 0.3, 1.0], np.float32)
    served = session.run(["sr"], client.build_inputs(lr, 5, 3, backend.files.noise_dim, temperatures))[0]
    local = backend.sample(lr[None].astype(np.float32), 5, 0, temperatures).samples
    assert served.shape == local.shape == (1, 3, 3, 32, 32)
    np.testing.assert_allclose(served, local, rtol=0, atol=1e-6)
    other = session.run(["sr"], client.build_inputs(lr, 6, 3, backend.files.noise_dim, temperatures))[0]
    assert np.abs(other - local).mean() > 1e-3  # another seed, other faces: the comparison can fail


class FakeTriton(ThreadingHTTPServer):
    """The two KServe v2 calls the client makes (model config, binary infer), answered from a
    repository with ONNX Runtime: a stand-in for tritonserver, which does not run here."""

    def __init__(self, model_dir: Path, schema):
        from google.protobuf import json_format

        self.config = json_format.MessageToDict(parse(schema, model_dir), preserving_proto_field_name=True)
        self.session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        super().__init__(("127.0.0.1", 0), FakeTritonHandler)


class FakeTritonHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, header: dict, binary: bytes = b"") -> None:
        body = json.dumps(header).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream" if binary else "application/json")
        if binary:
            self.send_header("Inference-Header-Content-Length", str(len(body)))
        self.send_header("Content-Length", str(len(body) + len(binary)))
        self.end_headers()
        self.wfile.write(body + binary)

    def do_GET(self):
        assert self.path == "/v2/models/cvdvae/config", self.path
        self.answer(self.server.config)

    def do_POST(self):
        assert self.path == "/v2/models/cvdvae/infer", self.path
        body = self.rfile.read(int(self.headers["Content-Length"]))
        size = int(self.headers["Inference-Header-Content-Length"])
        request, offset, feeds = json.loads(body[:size]), size, {}
        for tensor in request["inputs"]:
            assert tensor["datatype"] == "FP32"
            count = tensor["parameters"]["binary_data_size"]
            feeds[tensor["name"]] = np.frombuffer(body[offset:offset + count], np.float32).reshape(tensor["shape"])
            offset += count
        names = [output["name"] for output in request["outputs"]]
        results = self.server.session.run(names, feeds)
        outputs = [{"name": name, "datatype": "FP32", "shape": list(value.shape),
                    "parameters": {"binary_data_size": value.nbytes}} for name, value in zip(names, results)]
        self.answer({"model_name": "cvdvae", "outputs": outputs}, b"".join(value.tobytes() for value in results))


def test_the_client_command_writes_what_cvdvae_run_writes(exported, schema, tmp_path):
    pytest.importorskip("tritonclient.http")
    folder, repo = exported
    lr = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(lr).save(tmp_path / "face.png")
    server = FakeTriton(repo / "cvdvae", schema)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code = client.run_app(client.app, ["--url", f"127.0.0.1:{server.server_port}", "--input",
                                           str(tmp_path / "face.png"), "--n", "3", "--seed", "9", "-t", "0.8,0,1",
                                           "--out", str(tmp_path / "served"), "--quiet"])
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0
    assert cvdvae(["run", str(folder), "--input", str(tmp_path / "face.png"), "--n", "3", "--seed", "9",
                   "-t", "0.8,0,1", "--backend", "onnxruntime-cpu", "--no-grid", "--out", str(tmp_path / "local"),
                   "--quiet"]) == 0
    names = files_in(tmp_path / "local")
    assert names == ["face_s9_00.png", "face_s9_01.png", "face_s9_02.png"] == files_in(tmp_path / "served")
    for name in names:
        local = np.asarray(Image.open(tmp_path / "local" / name)).astype(int)
        assert np.abs(np.asarray(Image.open(tmp_path / "served" / name)).astype(int) - local).max() <= 1, name
