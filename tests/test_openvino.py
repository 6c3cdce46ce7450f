"""The OpenVINO backend: the official fixture, call-to-call stability, and the same PNGs as ONNX Runtime."""

import numpy as np
import pytest
from conftest import copy_export

from runtime.backends import open_backend
from runtime.cli.export import main as export_main
from runtime.cli.run import main as run_main
from runtime.model_files import locate

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino, or the cpu extra)")


@pytest.fixture(scope="module")
def demo(tmp_path_factory, demo_export):
    return locate(copy_export(demo_export, tmp_path_factory.mktemp("ov") / "demo"))


def test_openvino_reproduces_the_official_sampler(official_case, tmp_path):
    """The fixture's recorded noise through the exported graph: within 1e-4 on >= 99.9% of values."""
    ckpt, yaml_path, case = official_case
    out = tmp_path / "public"
    assert export_main(["--checkpoint", str(ckpt), "--config", str(yaml_path), "--out", str(out), "--onnx-only",
                        "--quiet", "--no-validate"]) == 0
    backend = open_backend(locate(out), "openvino")
    sr, counts = backend.run({k: case[k] for k in ("lr", "noise", "temperature")})
    err = np.abs(sr - case["expected"])
    assert not counts.any()
    assert sr.shape == case["expected"].shape and (err <= 1e-4).mean() >= 0.999 and err.max() < 1e-3


@pytest.mark.parametrize("batch,n", [(1, 1), (2, 3)])
def test_three_calls_of_one_compiled_model_are_bit_identical(demo, batch, n):
    """Reshaped to static shapes, OpenVINO 2026.4 changed its answers after the first call; the
    backend keeps dynamic shapes, and this holds it to every call giving the same bits."""
    backend = open_backend(demo, "openvino")
    lr = np.random.default_rng(batch).integers(0, 256, (batch, 3, 8, 8)).astype(np.float32)
    t = np.linspace(0.0, 1.2, n).astype(np.float32)
    first = backend.sample(lr, 4, 1, t).samples
    for _ in range(2):
        assert np.array_equal(backend.sample(lr, 4, 1, t).samples, first)
    other = backend.sample(lr[:1], 4, 1, t[:1]).samples  # another shape between does not change them either
    assert np.array_equal(backend.sample(lr, 4, 1, t).samples, first) and other.shape == (1, 1, 3, 32, 32)


def test_openvino_agrees_with_onnx_runtime(demo):
    ov = open_backend(demo, "openvino")
    ort = open_backend(demo, "onnxruntime-cpu")
    lr = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8)).astype(np.float32)
    t = np.array([0.8, 0.0, 1.2, 0.5], np.float32)
    assert np.abs(ov.sample(lr, 0, 0, t).samples - ort.sample(lr, 0, 0, t).samples).max() < 1e-4


def test_cvdvae_run_writes_the_same_pngs_on_openvino_and_onnx_runtime(demo, tmp_path):
    """Where the samples agree to 8 bits (all of them on the demo model), the files are the same bytes."""
    from PIL import Image

    faces = tmp_path / "in"
    faces.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(faces / f"{i}.png")
    for backend in ("openvino", "onnxruntime"):
        assert run_main([str(demo.folder), "--input", str(faces), "--n", "4", "--backend", backend, "--out",
                         str(tmp_path / backend), "--quiet"]) == 0
    ov = {p.name: p.read_bytes() for p in (tmp_path / "openvino").iterdir()}
    ort = {p.name: p.read_bytes() for p in (tmp_path / "onnxruntime").iterdir()}
    assert ov.keys() == ort.keys() and len(ov) == 15
    same = [name for name in ov if ov[name] == ort[name]]
    assert len(same) == len(ov), sorted(set(ov) - set(same))


def test_auto_takes_openvino_on_a_cpu(demo):
    backend = open_backend(demo, "auto")
    note = backend.note
    assert backend.name == "openvino" and note is None
