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


def test_the_next_calls_noise_is_made_ahead_off_the_calling_thread(demo, monkeypatch):
    """While a call runs, the block of the samples after it is made on a background thread at nice 19;
    the next call takes it, bit-equal to the block made in place, and the samples do not change."""
    import os
    import threading
    import time

    from cvdvae.seeding import noise_numpy
    from runtime.backends import host_memory

    if not host_memory.AHEAD:
        pytest.skip("noise is made ahead on Linux only (thread priorities)")
    made = []

    def recording(seed, n, dim, first_sample=0, workers=1):
        thread = threading.current_thread()
        made.append((first_sample, thread.name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return noise_numpy(seed, n, dim, first_sample, workers)

    monkeypatch.setattr(host_memory, "noise_numpy", recording)
    backend = open_backend(demo, "openvino")
    lr = np.random.default_rng(1).integers(0, 256, (1, 3, 8, 8)).astype(np.float32)
    t = np.array([[0.8, 1.1]], np.float32)
    samples = []
    for first in (0, 2, 4):
        samples.append(backend.sample_rows(lr, [7], first, t).samples)
        deadline = time.monotonic() + 30
        while backend._calls.ahead._thread.is_alive() and time.monotonic() < deadline:
            threading.Event().wait(0.01)
    ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert [(first, name.startswith("cvdvae-noise-ahead"), nice) for first, name, nice in made] == [
        (0, False, ours), (2, True, 19), (4, True, 19), (6, True, 19)]
    assert all(np.array_equal(backend._calls.noise.get_or_make((7, first, 2), None), noise_numpy(7, 2, demo.noise_dim,
                                                                                                first))
               for first in (0, 2, 4))
    monkeypatch.setattr(host_memory, "AHEAD", False)
    plain = open_backend(demo, "openvino")
    assert all(np.array_equal(plain.sample_rows(lr, [7], first, t).samples, s) for first, s in zip((0, 2, 4), samples))
