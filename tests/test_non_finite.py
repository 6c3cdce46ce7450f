"""A numerically broken model is never silent, on any backend.

Three broken models, each exported as a user would (``--no-validate``), each run on both CPU
backends:
- an official-format Lightning checkpoint whose pixel head holds NaN: one mixture's logit weights
  only, so the argmax picks the other mixtures and every engine's samples look finite;
- one with Inf in a decoder block's weights: ONNX Runtime's samples are NaN, OpenVINO's are zeros;
- one whose activations overflow only in float16: a latent mean of 1e5 is fine in float32 and
  Inf once cast to float16 (OpenVINO, computing in float32 around the graph's casts, gives
  finite pixels).
The graph's own ``non_finite`` output, counted before the clamps and the argmax, is what every
backend reports; without it these tests fail (the samples would be written).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, latency_benchmark, nan_model
from PIL import Image
from test_weights import official_state, write_ckpt

from cvdvae.config import preset
from cvdvae.random_weights import random_model
from cvdvae.seeding import noise_torch
from cvdvae.weights import load_model, save_safetensors
from export.exporter import ExportSpec, export_folder
from export.model_source import ModelChoice
from runtime.backends import open_backend
from runtime.cli.run import main as run_main
from runtime.model_files import locate

BACKENDS = ("onnxruntime", "openvino")
CONFIG = preset("tiny-x4")


def export(checkpoint: Path, out: Path, precision: str = "fp32") -> Path:
    config = out.parent / "tiny.json"
    config.write_text(CONFIG.to_json())
    spec = ExportSpec(ModelChoice(checkpoint=checkpoint, config=config), precision, validate=False, out=out,
                      engine=False)
    return export_folder(spec, log=lambda m: None, warn=lambda m: None).folder


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken")
    nan_head = official_state(CONFIG)
    nan_head["decoder.out_net.out_conv.weight"][0] = float("nan")  # mixture 0's logit
    write_ckpt(root / "nan-head.ckpt", nan_head, CONFIG)
    inf_block = official_state(CONFIG)
    inf_block["decoder.dec_blocks.3.resnet.c2.weight"][0, 0] = float("inf")
    write_ckpt(root / "inf-block.ckpt", inf_block, CONFIG)
    hot = random_model(CONFIG, with_posterior=True)
    last = hot.decoder.dec_blocks[-1]
    with torch.no_grad():
        last.prior.c4.bias[:CONFIG.zdim] = 1e5  # the prior's mean: 1e5 is Inf in float16
        last.z_proj.weight.mul_(1e-5)           # so the float32 network sees ordinary values
    save_safetensors(root / "hot.safetensors", hot.state_dict(), CONFIG)
    return {"nan pixel head": export(root / "nan-head.ckpt", root / "nan-head"),
            "inf decoder block": export(root / "inf-block.ckpt", root / "inf-block"),
            "float16 overflow": export(root / "hot.safetensors", root / "hot-fp16", "fp16"),
            "hot weights": root / "hot.safetensors", "nan weights": root / "nan-head.ckpt"}


@pytest.fixture(scope="module")
def face(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("face") / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    return path


def test_the_float16_fault_is_one_of_float16_alone(broken):
    """The oracle for "only in reduced precision": PyTorch on the same weights in float32 counts
    nothing and its samples are finite."""
    model = load_model(broken["hot weights"])
    lr = torch.randint(0, 256, (1, 3, 8, 8)).float()
    with torch.inference_mode():
        sr, counts = model.sample(lr, noise_torch(0, 2, model.noise_layout.dim)[None], torch.full((1, 2), 0.8))
    assert torch.isfinite(sr).all() and counts.sum() == 0


@pytest.mark.parametrize("case", ["nan pixel head", "inf decoder block", "float16 overflow"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_broken_model_writes_nothing_and_exits_1(broken, face, tmp_path, case, backend, capsys):
    pytest.importorskip(backend)
    out = tmp_path / "out"
    code = run_main([str(broken[case]), "--input", str(face), "--n", "2", "--backend", backend, "--out", str(out),
                     "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["non_finite_samples"] == 2 and report["outputs"] == []
    assert not list(out.glob("*.png"))
    assert "2 of 2 samples contain NaN/Inf" in report["errors"][0]["error"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_graphs_count_sees_what_the_pixels_hide(broken, face, backend):
    """Where the engine's samples are all finite numbers, only the graph's count tells."""
    pytest.importorskip(backend)
    lr = np.asarray(Image.open(face)).transpose(2, 0, 1)[None].astype(np.float32)
    hidden = ["nan pixel head"] + (["inf decoder block", "float16 overflow"] if backend == "openvino" else [])
    for case in hidden:
        result = open_backend(locate(broken[case]), backend).sample(lr, 0, 0, np.full(2, 0.8, np.float32))
        assert np.isfinite(result.samples).all() and (result.non_finite > 0).all(), case


def test_a_photo_of_a_broken_model_writes_nothing(broken, tmp_path):
    from cvdvae.hub.home import cvdvae_home

    if not (cvdvae_home() / "mtcnn" / "onet.onnx").is_file():
        pytest.skip("MTCNN graphs not fetched (cvdvae fetch mtcnn)")
    astronaut = Path(__import__("skimage").__file__).parent / "data" / "astronaut.png"
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "runtime.cli.run", str(broken["nan pixel head"]), "--input",
                        str(astronaut), "--faces", "--n", "2", "--out", str(out), "--json"],
                       capture_output=True, text=True, cwd=REPO)
    report = json.loads(r.stdout)
    assert r.returncode == 1 and report["non_finite_samples"] == 2, r.stderr
    assert "face samples contain NaN/Inf" in r.stderr and "nothing was written" in r.stderr
    assert report["outputs"] == [] and [p.name for p in out.iterdir()] == ["failures_s0.txt"]  # the run's own list
    assert report["failures_file"] == str(out / "failures_s0.txt")
    assert (out / "failures_s0.txt").read_text() == report["errors"][0]["error"] + "\n"


def test_the_benchmark_flags_every_row_of_a_broken_model(broken, tmp_path):
    pytest.importorskip("openvino")
    config = tmp_path / "tiny.json"
    config.write_text(CONFIG.to_json())
    out = tmp_path / "bench.json"
    assert latency_benchmark("--checkpoint", broken["nan weights"], "--config", config, "--backends",
                             "openvino,onnxruntime", "--n", "2", "--warmup", "0", "--iters", "1", "--json", out) == 0
    rows = {row["backend"]: row for row in json.loads(out.read_text())["results"]}
    assert set(rows) == {"torch", "openvino", "onnxruntime"}
    # Every sample of every call, warm-up included, counts: at least the 2 of the timed call.
    assert all(row["flagged"] and row["non_finite_samples"] >= 2 for row in rows.values()), rows


def test_an_export_from_cvdvae_0_1_still_runs_and_says_what_it_cannot_see(tmp_path, capsys):
    """A format-1 folder has no ``non_finite`` output: it runs, its NaN is still caught in the
    samples, and a note says that NaN an engine turns into numbers would not be."""
    model = nan_model(tmp_path / "old")
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "a.png")
    assert run_main([str(model), "--input", str(tmp_path / "a.png"), "--temperature", "0.5,1.0",
                     "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "does not count NaN/Inf itself" in err and "1 of 2 samples contain NaN/Inf" in err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a_s0_00.png", "failures_s0.txt"]
    assert "1 of 2 samples contain NaN/Inf" in (tmp_path / "o" / "failures_s0.txt").read_text()


@pytest.mark.parametrize("value", ["1e39", "10.5", "-1", "inf", "nan"])
def test_a_temperature_beyond_the_documented_range_is_refused_naming_the_flag(value, tmp_path, capsys):
    assert run_main([str(tmp_path), "--input", "x.png", "--temperature", value]) == 2
    err = capsys.readouterr().err
    assert "'--temperature'" in err and "from 0 to 10" in err and err.count("\n") == 1
