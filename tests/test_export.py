"""cvdvae-export on CPU: the graph contract, ORT-vs-PyTorch parity, precisions, refusals."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from conftest import REPO, custom_config, io_signature, require_hardware

from cvdvae.config import preset
from cvdvae.fileio import sha256_file
from cvdvae.random_weights import demo_model, random_model
from cvdvae.weights import load_model, save_safetensors
from export import onnx_passes
from export.graph import random_ops
from export.validate import onnxruntime_session, torch_reference, validation_inputs
from runtime.backends.gpu import tensorrt_unavailable_reason as unavailable_reason
from runtime.cli.export import main as export_main

ort = pytest.importorskip("onnxruntime")


def export(*args):
    code = export_main([*map(str, args), "--quiet"])
    return code


@pytest.fixture(scope="module")
def custom_checkpoint(tmp_path_factory):
    """A custom_width_str model, 4 mixtures, ky=5 cutting inside resolution 8."""
    cfg = custom_config()
    path = tmp_path_factory.mktemp("ckpt") / "custom.safetensors"
    save_safetensors(path, random_model(cfg, seed=5, with_posterior=True).state_dict(), cfg)
    return path


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "demo"
    assert export("--demo", "--out", out, "--onnx-only") == 0
    return out


@pytest.fixture(scope="module")
def custom_export(tmp_path_factory, custom_checkpoint):
    out = tmp_path_factory.mktemp("exports") / "custom"
    assert export("--checkpoint", custom_checkpoint, "--out", out, "--onnx-only") == 0
    return out


def ort_vs_torch(folder, model, shapes=((1, 1), (2, 3))):
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch, n in shapes:
        inputs = validation_inputs(model, batch, n, seed=batch + n)
        feeds = {k: t.numpy() for k, t in zip(("lr", "noise", "temperature"), inputs)}
        got = session.run(["sr"], feeds)[0]
        want, _, _ = torch_reference(model, inputs)
        assert got.shape == (batch, n, 3, model.config.image_size, model.config.image_size)
        assert np.abs(got - want).max() <= 1e-4, (batch, n)


def test_demo_graph_matches_pytorch(demo_export):
    ort_vs_torch(demo_export, demo_model())


def test_custom_graph_matches_pytorch(custom_export, custom_checkpoint):
    ort_vs_torch(custom_export, load_model(custom_checkpoint))


@pytest.mark.parametrize("which", ["demo", "custom"])
def test_graph_contract(which, demo_export, custom_export):
    folder = {"demo": demo_export, "custom": custom_export}[which]
    proto = onnx.load(str(folder / "model.onnx"))
    meta = json.loads((folder / "meta.json").read_text())
    h, big, dim = meta["lr_size"], meta["hr_size"], meta["noise_dim"]
    assert io_signature(proto) == {
        "lr": ("FLOAT", ["B", 3, h, h]),
        "noise": ("FLOAT", ["B", "n", dim]),
        "temperature": ("FLOAT", ["B", "n"]),
        "sr": ("FLOAT", ["B", "n", 3, big, big]),
        "non_finite": ("FLOAT", ["B", "n"]),
    }
    assert random_ops(proto) == []
    assert not {n.op_type for n in proto.graph.node} & {"RandomNormal", "RandomNormalLike", "RandomUniform",
                                                          "RandomUniformLike", "Multinomial", "Bernoulli"}
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
    onnx.checker.check_model(proto, full_check=True)
    # The LR encoder runs once per image: its convs see batch B, every other conv B*n.
    dims = {v.name: v.type.tensor_type.shape.dim for v in proto.graph.value_info}
    batch_of_convs = [dims[n.output[0]][0].dim_param for n in proto.graph.node if n.op_type == "Conv"]
    lr_convs = 1 + 4 * len(preset("tiny-x4").encoder_y_layers if which == "demo" else custom_config().encoder_y_layers)
    assert batch_of_convs.count("B") == lr_convs
    assert batch_of_convs.count("B*n") == len(batch_of_convs) - lr_convs
    stamp = {entry.key: entry.value for entry in proto.metadata_props}  # strings; structures as JSON
    for key in ("cvdvae_version", "graph_sha256", "precision"):
        assert stamp[key] == meta[key], key
    for key in ("config", "noise_dim", "noise_offsets", "scale"):
        assert json.loads(stamp[key]) == meta[key], key
    assert meta["onnx_sha256"] == sha256_file(folder / "model.onnx")
    cfg = json.loads(stamp["config"])
    assert meta["noise_offsets"][-1] == dim - (cfg["num_mixtures"] + 3) * big * big


def test_validation_is_recorded(tmp_path):
    out = tmp_path / "v"
    assert export("--demo", "--out", out, "--onnx-only", "--validate-shapes", "1x1,2x3") == 0
    report = json.loads((out / "meta.json").read_text())["validation"]
    assert report["passed"] and [(s["batch"], s["n"]) for s in report["shapes"]] == [(1, 1), (2, 3)]
    assert all(s["max_abs_error"] <= 1e-4 for s in report["shapes"])


def noise_path_nodes(proto):
    """Nodes computing from the ``noise`` values before they meet a Cast or a Conv: the latent
    draws (exp(log_sigma) * eps + mu) and the whole DMOL pixel head (shape arithmetic aside)."""
    reached, nodes = {"noise"}, []
    for node in proto.graph.node:  # topologically sorted
        if node.op_type in ("Cast", "Conv", "Shape", "Size") or not reached & set(node.input):
            continue
        nodes.append(node)
        reached.update(node.output)
    return nodes


def element_types(proto):
    types = {v.name: v.type.tensor_type.elem_type for v in [*proto.graph.value_info, *proto.graph.input,
                                                             *proto.graph.output]}
    types.update({i.name: i.data_type for i in proto.graph.initializer})
    return types


@pytest.mark.parametrize("precision,min_psnr", [("fp16", 35.0), ("bf16", 19.0)])
def test_reduced_precision_graphs(tmp_path, precision, min_psnr):
    out = tmp_path / precision
    assert export("--demo", f"--{precision}", "--out", out, "--onnx-only") == 0
    proto = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    elem = {"fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}[precision]
    types = element_types(proto)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    # The network computes in the reduced precision ...
    assert convs and sum(types[n.input[1]] == elem for n in convs) >= len(convs) - 2
    # ... except the float32 islands, read off the graph: every float the latent draws and the
    # pixel head touch, and the ops where float16 would overflow or round 1 - 1e-5 to 1.
    island = noise_path_nodes(proto)
    assert {"Erf", "Log", "Exp", "ArgMax"} <= {n.op_type for n in island}
    for node in island:
        floats = [types[name] for name in [*node.input, *node.output] if types.get(name) in (
            onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)]
        assert all(t == onnx.TensorProto.FLOAT for t in floats), (node.op_type, node.name, floats)
    for node in proto.graph.node:
        if node.op_type in ("Exp", "Log", "ArgMax", "Clip"):
            assert types[node.input[0]] == onnx.TensorProto.FLOAT, (node.op_type, node.name)
    assert io_signature(proto)["sr"][0] == "FLOAT" and io_signature(proto)["noise"][0] == "FLOAT"
    meta = json.loads((out / "meta.json").read_text())
    checks = {c["through"]: c for c in meta["validation"]["reduced_precision"]}
    arithmetic = checks[f"pytorch-{precision}"]  # the half-precision arithmetic really ran
    assert arithmetic["non_finite"] == 0 and arithmetic["psnr_db"] >= min_psnr and arithmetic["passed"]
    assert {"fp16": "float16", "bf16": "bfloat16"}[precision] in arithmetic["arithmetic"]
    assert meta["precision"] == precision and meta["validation"]["passed"]


def test_fp16_overflow_the_onnxruntime_cpu_fallback_hides_is_caught(tmp_path, capsys):
    """Activations above 65504 in one decoder block: real float16 arithmetic overflows to
    NaN/Inf, while ONNX Runtime's CPU provider (float32 kernels around float16 tensors)
    returns finite samples. The export must fail on it and write nothing."""
    cfg = preset("tiny-x4")
    model = random_model(cfg, with_posterior=True)
    block = model.decoder.dec_blocks[-1].resnet
    with torch.no_grad():
        block.c1.weight.mul_(800)
        block.c2.weight.mul_(1000)
    weights = tmp_path / "hot.safetensors"
    save_safetensors(weights, model.state_dict(), cfg)
    assert export("--checkpoint", weights, "--fp16", "--out", tmp_path / "x", "--onnx-only") == 1
    err = capsys.readouterr().err
    assert "validation FAILED" in err and "pytorch-fp16" in err and "NaN/Inf" in err, err
    assert not (tmp_path / "x").exists()
    # The oracle for "the CPU fallback cannot show it": the same graph through ONNX Runtime.
    assert export("--checkpoint", weights, "--fp16", "--out", tmp_path / "y", "--onnx-only", "--no-validate") == 0
    inputs = validation_inputs(load_model(weights), 1, 2)
    sr = ort.InferenceSession(str(tmp_path / "y" / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        ["sr"], {k: t.numpy() for k, t in zip(("lr", "noise", "temperature"), inputs)})[0]
    assert np.isfinite(sr).all()


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "runtime.cli.export", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})})


def assert_refused(result, message, folder):
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in folder.iterdir()) == []


def test_refuses_without_weights(tmp_path):
    (tmp_path / "out").mkdir()
    r = run_cli("--scale", "8", "--out", tmp_path / "out" / "x8", env={"CVDVAE_HOME": str(tmp_path / "home")})
    assert_refused(r, "no weights for x8: pass --checkpoint", tmp_path / "out")
    assert "--demo" in r.stderr


def test_refuses_a_config_that_does_not_fit_the_tensors(tmp_path, custom_checkpoint):
    (tmp_path / "out").mkdir()
    (tmp_path / "tiny.json").write_text(preset("tiny-x4").to_json())
    r = run_cli("--checkpoint", custom_checkpoint, "--config", tmp_path / "tiny.json", "--out", tmp_path / "out" / "x")
    assert_refused(r, "does not match the model config", tmp_path / "out")


def test_refuses_an_existing_folder(tmp_path):
    out = tmp_path / "out" / "x"
    out.mkdir(parents=True)
    (out / "mine.txt").write_text("keep")
    r = run_cli("--demo", "--out", out)
    assert r.returncode == 2 and "exists; pass --overwrite" in r.stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_overwrite_replaces_the_folder_whole(tmp_path, demo_export):
    out = tmp_path / "x"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert export("--demo", "--out", out, "--onnx-only", "--no-validate", "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "model.onnx"]
    assert [p.name for p in tmp_path.iterdir()] == ["x"]  # no temporary folders left behind


def test_weights_found_in_cvdvae_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    cfg = preset("tiny-x4")
    save_safetensors(home / "cvdvae-x4.safetensors", random_model(cfg, with_posterior=True).state_dict(), cfg)
    monkeypatch.setenv("CVDVAE_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert export("--scale", "4", "--onnx-only", "--no-validate") == 0
    meta = json.loads((tmp_path / "engines" / "x4-fp32" / "meta.json").read_text())
    assert meta["config"] == cfg.to_dict() and str(home) in meta["source"]


def test_external_data_path(tmp_path, monkeypatch):
    """Graphs over 2 GiB go to model.onnx + model.onnx.data; force it with a tiny limit."""
    monkeypatch.setattr(onnx_passes, "PROTOBUF_LIMIT", 10_000)
    out = tmp_path / "ext"
    assert export("--demo", "--out", out, "--onnx-only") == 0
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "model.onnx", "model.onnx.data", "reference.npz"]
    proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and (out / "model.onnx.data").stat().st_size >= sum(
        math.prod(t.dims) * 4 for t in external)
    assert json.loads((out / "meta.json").read_text())["validation"]["passed"]


def test_consistent_graph_bakes_the_projection(tmp_path):
    out = tmp_path / "c"
    assert export("--demo", "--consistent", "--out", out, "--onnx-only") == 0
    model = demo_model()
    inputs = validation_inputs(model, 2, 2)
    got = onnxruntime_session(out / "model.onnx", expose_choice=False).run(
        ["sr"], {k: t.numpy() for k, t in zip(("lr", "noise", "temperature"), inputs)})[0]
    with torch.inference_mode():
        want = model(*inputs, consistent=True).numpy()
    assert np.abs(got - want).max() <= 1e-4


def test_no_engine_is_one_line_and_exit_0(tmp_path, capsys):
    reason = unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT and a GPU are present: the engine test below covers this machine")
    assert export_main(["--demo", "--out", str(tmp_path / "x"), "--no-validate"]) == 0
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("no engine built:")]
    assert len(lines) == 1 and "--engine-only" in lines[0]
    r = run_cli("--demo", "--out", tmp_path / "y", "--no-validate", "--require-engine")
    assert r.returncode == 2 and "no TensorRT engine can be built here" in r.stderr
    assert not (tmp_path / "y").exists()


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_tensorrt_engine_build(tmp_path, precision):
    """On a GPU with TensorRT: each precision builds through Polygraphy and passes its check."""
    require_hardware(unavailable_reason(), "TensorRT engine build needs TensorRT and a CUDA GPU")
    out = tmp_path / "trt"
    assert export("--demo", f"--{precision}", "--out", out, "--require-engine", "--max-batch", "2", "--max-n", "4",
                  "--opt-n", "2") == 0
    meta = json.loads((out / "meta.json").read_text())
    engine = meta["engine"]
    assert sha256_file(out / "engine.plan") == engine["plan_sha256"] and engine["tf32"] is False
    assert engine["profile"]["max_n"] == 4 and engine["validation"]["passed"]
    assert all(c["non_finite"] == 0 for c in engine["validation"]["cases"])
