"""Shared test helpers: small configs, random models, the official-sampler fixture."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from cvdvae.config import CVDVAEConfig, config_from_mapping, preset

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"  # the independent oracles (tests/fixtures/README.md)

# Widths that change per resolution (so channels are padded and mixins sliced), 4
# mixtures, and a ky that cuts inside resolution 8.
CUSTOM = dict(
    width=8, zdim=3, bottleneck_multiple=0.5, custom_width_str="8:12,4:12,1:16",
    enc_blocks="16x1,16d2,8x1,8d2,4x1,4d4,1x1", dec_blocks="1x1,4m1,4x1,8m4,8x2,16m8,16x1",
    no_bias_above=8, num_mixtures=4, image_size=16,
    enc_blocks_y="8x1,8d2,4d4,1x1", width_y=12, custom_width_str_y="1:16", ky=5, image_size_y=8,
)


def custom_config(**changes) -> CVDVAEConfig:
    return config_from_mapping({**CUSTOM, **changes})[0]


def pytest_configure(config):
    """Under xdist each worker's PyTorch, and the processes it starts, get the worker's share of the
    cores: two workers each running PyTorch on both cores of a 2-core machine make its small
    operations many times slower (its threads wait for cores the other worker holds)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    share = max(1, (os.cpu_count() or 1) // workers)
    if workers > 1 and torch.get_num_threads() > share:
        torch.set_num_threads(share)
        os.environ.setdefault("OMP_NUM_THREADS", str(share))


# Modules whose module-scoped set-up (a Ray cluster, a running service, a training run) is too
# dear to make twice: under xdist each runs whole on one worker, and the other tests go one by
# one to whichever worker is free.
ONE_WORKER_MODULES = ("test_cluster", "test_nodes", "test_non_finite", "test_prior", "test_serve", "test_train",
                      "test_web_page")


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "load":  # another --dist asked for: xdist's own
        return None
    from xdist.scheduler import LoadScopeScheduling

    class OneWorkerModules(LoadScopeScheduling):
        """A work unit is a test, or a whole module of ONE_WORKER_MODULES (those go first)."""

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if Path(module).stem in ONE_WORKER_MODULES else nodeid

    return OneWorkerModules(config, log)


@pytest.fixture(scope="session", autouse=True)
def trace_each_graph_once(request, tmp_path_factory):
    """Exports share their traces (tests/trace_memo.py), across the xdist workers too."""
    from export import graph
    from trace_memo import memoised

    root = tmp_path_factory.getbasetemp()  # an xdist worker's is a folder in the session's own
    shared = root.parent if hasattr(request.config, "workerinput") else root
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(graph, "trace_to_onnx", memoised(graph.trace_to_onnx, shared / "traced-graphs"))
        yield


@pytest.fixture(scope="session")
def tiny_config() -> CVDVAEConfig:
    return preset("tiny-x4")


def make_inputs(cfg: CVDVAEConfig, batch: int, n: int, seed: int = 0, t: float = 0.8):
    gen = torch.Generator().manual_seed(seed)
    size = cfg.image_size_y
    lr = torch.randint(0, 256, (batch, 3, size, size), generator=gen).float() if size else None
    from cvdvae.noise_layout import NoiseLayout

    noise = torch.randn(batch, n, NoiseLayout.from_config(cfg).dim, generator=gen)
    temperature = torch.full((batch, n), t)
    return lr, noise, temperature


def io_signature(proto) -> dict[str, tuple[str, list]]:
    """name -> (dtype name, dims with symbolic names) of every input and output of an ONNX graph."""
    import onnx

    out = {}
    for value in [*proto.graph.input, *proto.graph.output]:
        t = value.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        out[value.name] = (onnx.TensorProto.DataType.Name(t.elem_type), dims)
    return out


def require_hardware(reason: str | None, what: str) -> None:
    """Skip, printing why, when ``reason`` says the hardware or package is missing; under
    ``CVDVAE_REQUIRE_GPU=1`` (scripts/gpu-check.sh) fail instead, so a GPU run cannot pass by skipping."""
    if reason is None:
        return
    message = f"{what}: {reason}"
    print(f"skipped: {message}")
    if os.environ.get("CVDVAE_REQUIRE_GPU") == "1":
        pytest.fail(f"{message} (CVDVAE_REQUIRE_GPU=1)")
    pytest.skip(message)


def cuda_unavailable_reason() -> str | None:
    return None if torch.cuda.is_available() else "no CUDA device (PyTorch is a CPU build or sees no GPU)"


def onnxruntime_cuda_unavailable_reason() -> str | None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"this ONNX Runtime ({ort.__version__}) has no CUDA provider (install onnxruntime-gpu)"
    return cuda_unavailable_reason()


@pytest.fixture(scope="session")
def official_case():
    """The official CVDVAE sampler's outputs for recorded noise (tests/fixtures/official)."""
    paths = [FIXTURES / "official" / n for n in ("public.ckpt", "public.yaml", "public_case.npz")]
    case = dict(np.load(paths[2]))
    return paths[0], paths[1], case


def nan_model(folder):
    """A crafted graph with the contract's I/O: sr = sigmoid(noise) + log(1 - t), so a sample
    with t = 1 is -Inf and one with t > 1 is NaN, while t < 1 gives finite values."""
    import json

    import onnx
    from onnx import TensorProto, helper

    from cvdvae.fileio import sha256_file

    dim, lr_size, hr_size = 64, 2, 4
    nodes = [
        helper.make_node("Slice", ["noise", "start", "stop", "axis"], ["pixels"]),
        helper.make_node("Reshape", ["pixels", "shape"], ["image"]),
        helper.make_node("Sigmoid", ["image"], ["squashed"]),
        helper.make_node("Sub", ["one", "temperature"], ["headroom"]),
        helper.make_node("Log", ["headroom"], ["log_headroom"]),
        helper.make_node("Unsqueeze", ["log_headroom", "axes"], ["per_sample"]),
        helper.make_node("Add", ["squashed", "per_sample"], ["sr"]),
    ]
    init = [helper.make_tensor("start", TensorProto.INT64, [1], [0]),
            helper.make_tensor("stop", TensorProto.INT64, [1], [3 * hr_size**2]),
            helper.make_tensor("axis", TensorProto.INT64, [1], [2]),
            helper.make_tensor("shape", TensorProto.INT64, [5], [0, 0, 3, hr_size, hr_size]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
            helper.make_tensor("axes", TensorProto.INT64, [3], [2, 3, 4])]
    graph = helper.make_graph(nodes, "nan", [
        helper.make_tensor_value_info("lr", TensorProto.FLOAT, ["B", 3, lr_size, lr_size]),
        helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["B", "n", dim]),
        helper.make_tensor_value_info("temperature", TensorProto.FLOAT, ["B", "n"])],
        [helper.make_tensor_value_info("sr", TensorProto.FLOAT, ["B", "n", 3, hr_size, hr_size])], init)
    folder.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(folder / "model.onnx"))
    meta = {"format": 1, "lr_size": lr_size, "hr_size": hr_size, "scale": 2, "noise_dim": dim, "precision": "fp32",
            "onnx_sha256": sha256_file(folder / "model.onnx")}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="session")
def demo_export(tmp_path_factory):
    """The built-in demo model exported (ONNX only, unvalidated): 8x8 LR faces in, 32x32 samples out."""
    from export.exporter import ExportSpec, export_folder
    from export.model_source import ModelChoice

    folder = tmp_path_factory.mktemp("demo-export") / "demo"
    export_folder(ExportSpec(ModelChoice(demo=True), validate=False, out=folder, engine=False),
                  log=lambda message: None, warn=lambda message: None)
    return folder


def command(main, *args, env=None) -> subprocess.CompletedProcess:
    """A verb's ``main`` run in this process as its command line runs it, with ``env`` set for the
    call: its exit status and output, for tests a fresh process adds nothing to."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        code = main([str(arg) for arg in args])
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


def latency_benchmark(*args) -> int:
    """benchmarks/latency.py run in this process, so that its export shares the session's traces
    (tests/trace_memo.py); each backend still runs in a worker process of its own, as always."""
    import importlib.util

    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO / "benchmarks"))  # its sibling modules, as when run as a script
        spec = importlib.util.spec_from_file_location("latency_benchmark", REPO / "benchmarks" / "latency.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.main([str(arg) for arg in args])


def copy_export(folder, to):
    """A test's own copy of an export folder (so it may change it)."""
    import shutil

    shutil.copytree(folder, to)
    return to
