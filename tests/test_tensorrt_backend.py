"""runtime/tensorrt_backend.py driven on a CPU by recording fakes of TensorRT and CUDA (tests/fakes.py).

The oracle is the toy network applied on the host to the contract's numpy noise: it knows
nothing of contexts, buffers, padding or graphs, which are what these tests exercise.
"""

import numpy as np
import pytest
from fakes import FakeCuda, FakeTensorRT, engine_spec, toy_meta, toy_model, write_plan

from cvdvae.errors import CVDVAEError
from cvdvae.seeding import noise_numpy
from runtime.backends import tensorrt as tensorrt_backend
from runtime.backends.tensorrt import TensorRTBackend
from runtime.cli.run import main as run_main
from runtime.sampling import sample_images


def oracle(lr, seed, first, temperature, meta=None):
    meta = meta or toy_meta()
    lr = np.zeros((1, 3, 1, 1)) if lr is None else lr
    batch, n = len(lr), len(temperature)
    noise = np.broadcast_to(noise_numpy(seed, n, meta["noise_dim"], first), (batch, n, meta["noise_dim"]))
    return toy_model(lr, noise, np.broadcast_to(temperature, (batch, n)), meta["hr_size"])


def images(batch, seed):
    return np.random.default_rng(seed).integers(0, 256, (batch, 3, 2, 2)).astype(np.float32)


@pytest.fixture
def fake(tmp_path):
    cuda = FakeCuda()
    trt = FakeTensorRT(cuda)

    def backend(spec=None, meta=None, **limits):
        files = write_plan(tmp_path / "engine", spec or engine_spec(), meta or toy_meta(), trt)
        return TensorRTBackend(files, trt=trt, cuda=trt.cuda, **limits)

    return trt, cuda, backend


def test_alternating_shapes_each_replay_their_own_graph(fake):
    trt, cuda, make = fake
    backend = make()
    calls = [(1, 3, 0), (2, 2, 1), (1, 3, 2), (2, 2, 3), (2, 2, 4), (1, 3, 5)]
    for i, (batch, n, seed) in enumerate(calls):
        lr, t = images(batch, i), np.linspace(0.1, 1.3, n).astype(np.float32) + i
        np.testing.assert_allclose(backend.sample(lr, seed, 2 * i, t).samples, oracle(lr, seed, 2 * i, t), atol=1e-6)
    assert len(backend.engine.contexts) == 2 and trt.violations == []
    for context in backend.engine.contexts:  # each context's shapes set once, before its capture
        assert len(context.shape_calls) == 3
    assert cuda.captures == 2 and cuda.replays == 4
    assert trt.executions.count((1, 3)) == 3 and trt.executions.count((2, 2)) == 3  # replays really ran


def test_a_replay_computes_on_the_new_inputs(fake):
    trt, cuda, make = fake
    backend = make()
    lr1, lr2 = images(2, 0), images(2, 1)
    t1, t2 = np.array([0.8, 0.0], np.float32), np.array([1.2, 0.5], np.float32)
    first = backend.sample(lr1, 0, 0, t1).samples
    second = backend.sample(lr2, 9, 4, t2).samples  # same shape: a graph replay
    assert cuda.replays == 1
    np.testing.assert_allclose(second, oracle(lr2, 9, 4, t2), atol=1e-6)
    assert np.abs(second - first).mean() > 0.05


def test_a_short_last_chunk_as_cvdvae_run_plans_it(fake):
    trt, cuda, make = fake
    backend = make(max_batch=2, max_n=3)
    lr = images(5, 3)
    temperatures = np.array([0.8, 0.0, 1.2, 0.5, 1.0], np.float32)
    out = sample_images(backend, lr, 11, temperatures).samples
    np.testing.assert_allclose(out, oracle(lr, 11, 0, temperatures), atol=1e-6)
    assert sorted(set(trt.executions)) == [(1, 2), (1, 3), (2, 2), (2, 3)] and trt.violations == []


def test_calls_below_the_profile_minimum_are_padded(fake):
    trt, cuda, make = fake
    backend = make(engine_spec(batch=(2, 2, 3), n=(3, 3, 4)))
    lr, t = images(1, 0), np.array([0.7], np.float32)
    out = backend.sample(lr, 5, 6, t).samples
    assert out.shape == (1, 1, 3, 4, 4)
    np.testing.assert_allclose(out, oracle(lr, 5, 6, t), atol=1e-6)
    assert set(trt.executions) == {(2, 3)}
    with pytest.raises(CVDVAEError, match="below the engine profile's minimum 2"):
        make(engine_spec(batch=(2, 2, 3)), max_batch=1)


def test_a_failed_enqueue_raises_and_is_never_replayed(fake):
    trt, cuda, make = fake
    backend = make()
    lr, t = images(1, 0), np.array([0.8, 0.9], np.float32)
    good = backend.sample(lr, 0, 0, t).samples
    trt.fail_enqueue = lambda context: True
    with pytest.raises(RuntimeError, match="execute_async_v3 failed for B=2 n=2"):
        backend.sample(images(2, 1), 0, 0, t).samples
    with pytest.raises(RuntimeError, match="execute_async_v3 failed"):
        backend.sample(images(2, 1), 0, 0, t).samples  # no stale graph stands in for the failed shape
    assert cuda.captures == 1
    trt.fail_enqueue = lambda context: False
    np.testing.assert_allclose(backend.sample(lr, 0, 0, t).samples, good, atol=0)


def test_an_enqueue_failing_during_capture_turns_graphs_off(fake):
    trt, cuda, make = fake
    backend = make()
    trt.fail_enqueue = lambda context: cuda.recording is not None
    for i, (batch, n) in enumerate([(1, 2), (1, 2), (2, 3), (2, 3)]):
        lr, t = images(batch, i), np.full(n, 0.8, np.float32)
        np.testing.assert_allclose(backend.sample(lr, i, 0, t).samples, oracle(lr, i, 0, t), atol=1e-6)
    assert cuda.captures == 1 and cuda.replays == 0
    assert backend.cuda_graphs.startswith("off (capture refused")


def test_a_refused_capture_is_tried_once(fake):
    trt, _, make = fake
    cuda = trt.cuda = FakeCuda(refuse_capture=True)
    backend = make()
    for i, (batch, n) in enumerate([(1, 2), (2, 2), (1, 2), (1, 4), (2, 2)]):
        lr, t = images(batch, i), np.full(n, 0.5, np.float32)
        np.testing.assert_allclose(backend.sample(lr, i, 0, t).samples, oracle(lr, i, 0, t), atol=1e-6)
    assert cuda.captures == 1 and cuda.replays == 0
    assert backend.cuda_graphs == "off (capture refused: operation not permitted when stream is capturing)"


@pytest.mark.parametrize("change,message", [
    (lambda io: io["noise"][2].__setitem__(2, 32), "noise is input float32 [-1, -1, 32], meta.json says input "
                                                   "float32 [-1, -1, 64]"),
    (lambda io: io["sr"].__setitem__(1, "HALF"), "sr is output float16"),
    (lambda io: io.pop("temperature"), "has no tensor 'temperature'"),
    (lambda io: io.__setitem__("seed", ["INPUT", "FLOAT", [1]]), "tensors the contract lacks (seed)"),
])
def test_a_plan_whose_io_disagrees_with_meta_json_is_refused(fake, change, message):
    spec = engine_spec()
    change(spec["io"])
    with pytest.raises(CVDVAEError, match="engine-only") as err:
        fake[2](spec)
    assert message in str(err.value)


def test_a_plan_from_another_export_is_refused_by_its_sha256(fake, tmp_path):
    trt, cuda, make = fake
    files = write_plan(tmp_path / "a", engine_spec(), toy_meta(), trt)
    files.plan.write_bytes(b'{"compute": "toy"}')
    with pytest.raises(CVDVAEError, match="is not the engine meta.json describes"):
        TensorRTBackend(files, trt=trt, cuda=cuda)
    other = write_plan(tmp_path / "b", engine_spec(), toy_meta(), trt)
    other.meta["engine"]["compute_capability"] = "8.6"
    with pytest.raises(CVDVAEError, match="built for compute capability 8.6"):
        TensorRTBackend(other, trt=trt, cuda=cuda)


def test_cvdvae_run_says_why_a_mismatched_plan_cannot_run(fake, tmp_path, monkeypatch, capsys):
    """Through the command: one line, exit 2 (bad input), nothing written."""
    import json
    import sys

    from PIL import Image

    trt, cuda, _ = fake
    spec = engine_spec()
    spec["io"]["noise"][2][2] = 32
    files = write_plan(tmp_path / "model", spec, toy_meta(), trt)
    (files.folder / "meta.json").write_text(json.dumps(files.meta))
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "face.png")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(tensorrt_backend, "TorchCuda", lambda: cuda)
    monkeypatch.setattr("runtime.backends.tensorrt_unavailable_reason", lambda: None)
    code = run_main([str(files.folder), "--input", str(tmp_path / "face.png"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not match meta.json: noise" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_prior_only_engine_takes_no_lr(fake, tmp_path):
    trt, cuda, _ = fake
    files = write_plan(tmp_path / "prior", engine_spec(lr_size=None), toy_meta(lr_size=None), trt)
    backend = TensorRTBackend(files, trt=trt, cuda=cuda)
    for seed in (0, 1):  # a capture, then a replay
        t = np.array([0.8, 0.0, 1.2], np.float32)
        np.testing.assert_allclose(backend.sample(None, seed, 2, t).samples, oracle(None, seed, 2, t), atol=1e-6)
    assert cuda.replays == 1 and "lr" not in backend.engine.contexts[0].shapes
    with pytest.raises(CVDVAEError, match="tensors the contract lacks \\(lr\\)"):
        TensorRTBackend(write_plan(tmp_path / "mixed", engine_spec(), toy_meta(lr_size=None), trt), trt=trt,
                        cuda=cuda)


def test_the_engines_own_count_marks_samples_whose_pixels_hide_nan(fake):
    """An engine that turns NaN into numbers (samples at t >= 1 here) still counts them in its
    ``non_finite`` output; the backend reads it back per sample, padding rows and samples dropped."""
    trt, cuda, make = fake
    backend = make(engine_spec(compute="nan-hiding", batch=(2, 2, 2), n=(3, 4, 4)))
    result = backend.sample(images(1, 0), 0, 0, np.array([0.5, 1.5], np.float32))
    assert np.isfinite(result.samples).all() and result.samples.shape == (1, 2, 3, 4, 4)
    assert result.non_finite.tolist() == [[0, 3 * 4 * 4]]


def test_an_engine_from_cvdvae_0_1_has_no_count_and_still_runs(fake):
    """A format-1 export's plan has no ``non_finite``: the backend binds none and counts the pixels."""
    trt, cuda, make = fake
    backend = make(engine_spec(counts=False), toy_meta(counts=False))
    lr, t = images(1, 3), np.array([0.8, 0.2], np.float32)
    result = backend.sample(lr, 0, 0, t)
    np.testing.assert_allclose(result.samples, oracle(lr, 0, 0, t), atol=1e-6)
    assert result.non_finite.tolist() == [[0, 0]]
