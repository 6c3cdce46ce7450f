"""cvdvae-run with ONNX Runtime on exported tiny models (the TensorRT path is skipped without a GPU)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, copy_export, nan_model, onnxruntime_cuda_unavailable_reason, require_hardware
from PIL import Image

from cvdvae.degradation import bicubic_degradation
from cvdvae.random_weights import demo_model
from cvdvae.seeding import noise_torch
from runtime.backends import open_backend
from runtime.backends.gpu import tensorrt_unavailable_reason
from runtime.backends.interface import sampled
from runtime.cli.export import main as export_main
from runtime.cli.run import main as run_main
from runtime.model_files import locate
from runtime.sampling import Job, sample_chunks, sample_images, sample_jobs

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, demo_export):
    root = tmp_path_factory.mktemp("engines")
    copy_export(demo_export, root / "plain")
    assert export_main(["--demo", "--consistent", "--out", str(root / "consistent"), "--onnx-only", "--quiet",
                        "--no-validate"]) == 0
    return root


def lr_image(path, seed=0, size=8, mode="RGB"):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(30, 220, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return pixels


def run(model, *args):
    return run_main([str(model), *map(str, args), "--quiet"])


def pngs(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_same_seed_same_bytes_and_prefix_property(exported, tmp_path):
    lr_image(tmp_path / "a.png")
    assert run(exported / "plain", "--input", tmp_path / "a.png", "--n", "4", "--out", tmp_path / "r1") == 0
    assert run(exported / "plain", "--input", tmp_path / "a.png", "--n", "4", "--out", tmp_path / "r2") == 0
    assert pngs(tmp_path / "r1") == pngs(tmp_path / "r2")
    assert run(exported / "plain", "--input", tmp_path / "a.png", "--n", "2", "--out", tmp_path / "r3",
               "--max-n", "1") == 0
    first_two = {k: v for k, v in pngs(tmp_path / "r1").items() if k in ("a_s0_00.png", "a_s0_01.png")}
    assert {k: v for k, v in pngs(tmp_path / "r3").items() if k != "a_s0_grid.png"} == first_two
    assert run(exported / "plain", "--input", tmp_path / "a.png", "--n", "2", "--seed", "1",
               "--out", tmp_path / "r4") == 0
    assert pngs(tmp_path / "r4")["a_s1_00.png"] != first_two["a_s0_00.png"]


def read(path):
    return np.asarray(Image.open(path), dtype=np.float64)


def lr_error(folder, lr, n):
    down = bicubic_degradation(32, 4).downscale
    errors = []
    for k in range(n):
        sample = torch.from_numpy(read(folder / f"a_s0_{k:02d}.png")).permute(2, 0, 1)
        errors.append(np.abs(down(sample).permute(1, 2, 0).numpy() - lr).mean())
    return np.array(errors)


def test_samples_are_diverse_and_consistent_with_the_lr(exported, tmp_path):
    """The demo weights are untrained, so consistency comes from the exact projection graph;
    only the 8-bit rounding and the final [0, 1] clamp keep it from being exact."""
    lr = lr_image(tmp_path / "a.png", size=8).astype(np.float64)
    for graph in ("plain", "consistent"):
        assert run(exported / graph, "--input", tmp_path / "a.png", "--n", "4", "--out", tmp_path / graph) == 0
    consistent, plain = lr_error(tmp_path / "consistent", lr, 4), lr_error(tmp_path / "plain", lr, 4)
    assert consistent.max() < 8.0 and consistent.max() < plain.min() / 5
    samples = [read(tmp_path / "consistent" / f"a_s0_{k:02d}.png") for k in range(4)]
    for i, s in enumerate(samples):
        for other in samples[i + 1:]:
            assert np.abs(s - other).mean() > 5.0  # diverse: every pair differs


def test_runtime_equals_pytorch_for_the_same_seed(exported):
    files = locate(exported / "plain")
    backend = open_backend(files, "onnxruntime")
    note = backend.note
    assert note is None and backend.name == "onnxruntime"
    rng = np.random.default_rng(3)
    lr = rng.integers(0, 256, (2, 3, 8, 8)).astype(np.float32)
    temperature = np.array([0.8, 0.0, 1.2], np.float32)
    got = backend.sample(lr, seed=7, first_sample=2, temperature=temperature).samples
    model = demo_model()
    noise = noise_torch(7, 3, model.noise_layout.dim, first_sample=2)[None].expand(2, -1, -1)
    with torch.inference_mode():
        want = model(torch.from_numpy(lr), noise, torch.from_numpy(temperature).expand(2, -1)).numpy()
    assert np.abs(got - want).max() <= 1e-4


class RecordingBackend:
    """Records each call's rows (seeds) and samples; a sample's value encodes (image, seed, k, t)."""

    def __init__(self, max_batch: int, max_n: int, rows_independent: bool):
        self.max_batch, self.max_n, self.rows_independent = max_batch, max_n, rows_independent
        self.calls: list[tuple[tuple[int, ...], range]] = []

    def sample_rows(self, lr, seeds, first_sample, temperature):
        n = temperature.shape[1]
        self.calls.append((tuple(seeds), range(first_sample, first_sample + n)))
        k = np.arange(first_sample, first_sample + n)[None, :]
        value = lr[:, :1, 0, 0] * 1000 + np.array(seeds)[:, None] * 100 + k + temperature
        return sampled(np.broadcast_to(value[..., None, None, None], (*value.shape, 3, 2, 2)).astype(np.float64))


def test_sampling_covers_every_sample_within_the_limits_in_order():
    """7 images of one seed, n = 10, at most 3 rows x 4 samples per call: rows share calls (one
    noise block), samples in balanced chunks 3 + 4 + 3; each result row is its own image's."""
    backend = RecordingBackend(max_batch=3, max_n=4, rows_independent=False)
    lr = np.arange(7, dtype=np.float32)[:, None, None, None] * np.ones((7, 3, 2, 2), np.float32)
    t = np.linspace(0, 0.9, 10).astype(np.float32)
    out = sample_images(backend, lr, 5, t).samples
    chunks = [range(0, 3), range(3, 7), range(7, 10)]
    assert backend.calls == [((5,) * rows, c) for rows in (3, 3, 1) for c in chunks]
    want = np.arange(7)[:, None] * 1000 + 500 + np.arange(10)[None, :] + t[None, :]
    np.testing.assert_allclose(out[:, :, 0, 0, 0], want, atol=1e-6)
    assert sample_chunks(8, 8) == [range(0, 8)]


@pytest.mark.parametrize("independent", [False, True])
def test_requests_of_different_seeds_share_calls_only_where_rows_are_independent(independent):
    backend = RecordingBackend(max_batch=4, max_n=8, rows_independent=independent)
    image = np.zeros((3, 2, 2), np.float32)
    jobs = [Job(image, seed, np.full(n, 0.5, np.float32)) for seed, n in [(1, 2), (2, 2), (3, 5), (4, 2)]]
    out = sample_jobs(backend, jobs)
    if independent:  # grouped by n: seeds 1, 2, 4 (n = 2) in one call, seed 3 (n = 5) in another
        assert backend.calls == [((1, 2, 4), range(0, 2)), ((3,), range(0, 5))]
    else:
        assert backend.calls == [((1,), range(0, 2)), ((2,), range(0, 2)), ((4,), range(0, 2)), ((3,), range(0, 5))]
    for job, result in zip(jobs, out):  # each job's own seed and samples 0 .. n-1, in the order given
        np.testing.assert_allclose(result.samples[:, 0, 0, 0], job.seed * 100 + np.arange(job.n) + 0.5)


def test_folder_glob_json_and_batching_give_the_same_pixels(exported, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(5):
        lr_image(inputs / f"face{i}.png", seed=i)
    assert run(exported / "plain", "--input", inputs, "--n", "3", "--out", tmp_path / "a", "--max-batch", "2",
               "--max-n", "2") == 0
    assert run(exported / "plain", "--input", str(inputs / "face*.png"), "--n", "3", "--out", tmp_path / "b",
               "--max-batch", "4") == 0
    assert pngs(tmp_path / "a") == pngs(tmp_path / "b") and len(pngs(tmp_path / "a")) == 5 * 4
    r = subprocess.run([sys.executable, "-m", "runtime.cli.run", str(exported / "plain"), "--input", str(inputs),
                        "--n", "2", "--out", str(tmp_path / "c"), "--json"], capture_output=True, text=True, cwd=REPO)
    summary = json.loads(r.stdout)
    assert r.returncode == 0 and summary["inputs"] == 5 and summary["samples"] == 10
    assert {"wall_s", "samples_per_s", "backend", "precision", "noise_s"} <= summary.keys()
    assert summary["backend"] in ("openvino", "onnxruntime") and summary["precision"] == "fp32"
    assert summary["execution_provider"] in ("CPU", "CPUExecutionProvider")  # says which engine ran


def test_temperature_sweep(exported, tmp_path):
    lr_image(tmp_path / "a.png")
    assert run(exported / "plain", "--input", tmp_path / "a.png", "--temperature", "0,0.5,1", "--out",
               tmp_path / "o") == 0
    assert sorted(pngs(tmp_path / "o")) == ["a_s0_00.png", "a_s0_01.png", "a_s0_02.png", "a_s0_grid.png"]
    assert run(exported / "plain", "--input", tmp_path / "a.png", "--temperature", "0,1", "--n", "3") == 2


def test_from_hr_degrades_with_matlab_bicubic(exported, tmp_path):
    hr = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(hr).save(tmp_path / "hr.png")
    Image.fromarray(bicubic_degradation(32, 4).downscale_uint8(torch.from_numpy(hr).permute(2, 0, 1))
                    .permute(1, 2, 0).numpy().astype(np.uint8)).save(tmp_path / "lr.png")
    assert run(exported / "plain", "--input", tmp_path / "hr.png", "--from-hr", "--n", "2", "--out", tmp_path / "a") == 0
    assert run(exported / "plain", "--input", tmp_path / "lr.png", "--n", "2", "--out", tmp_path / "b") == 0
    assert (tmp_path / "a" / "hr_s0_01.png").read_bytes() == (tmp_path / "b" / "lr_s0_01.png").read_bytes()
    grid = Image.open(tmp_path / "a" / "hr_s0_grid.png")
    assert grid.size == (4 * 32 + 3 * 4, 32)  # LR | HR | 2 samples


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "I;16"])
def test_other_modes_are_converted_once(exported, tmp_path, mode, capsys):
    if mode == "I;16":
        Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "a.png")
    else:
        lr_image(tmp_path / "a.png", mode=mode)
    lr_image(tmp_path / "b.png", mode=mode if mode != "I;16" else "L")
    code = run_main([str(exported / "plain"), "--input", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--n", "1",
                     "--out", str(tmp_path / "o")])
    assert code == 0 and sorted(pngs(tmp_path / "o")) == ["a_s0_00.png", "a_s0_grid.png", "b_s0_00.png",
                                                         "b_s0_grid.png"]
    assert capsys.readouterr().err.count("are converted to 8-bit sRGB") == 1


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "runtime.cli.run", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO)


def test_bad_inputs_are_reported_and_the_good_ones_still_written(exported, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    lr_image(inputs / "good.png")
    lr_image(inputs / "big.png", size=9)
    (inputs / "garbage.png").write_bytes(b"not an image at all")
    lr_image(inputs / "cut.png", size=8)
    data = (inputs / "cut.png").read_bytes()
    (inputs / "cut.png").write_bytes(data[: len(data) // 2])
    Image.new("L", (20000, 20000)).save(inputs / "bomb.png")
    (tmp_path / "empty").mkdir()
    r = run_cli(exported / "plain", "--input", inputs, tmp_path / "missing.png", tmp_path / "empty",
                str(tmp_path / "nomatch*.png"), "--n", "2", "--out", tmp_path / "o", "--quiet")
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("cvdvae-run: error:")]
    assert len(errors) == 7 and "Traceback" not in r.stderr
    expected = {"big.png": "is 9x9, the model takes 8x8", "garbage.png": "not a readable image",
                "cut.png": "truncated", "bomb.png": "decompression bomb", "missing.png": "no such file",
                "empty": "no png/jpg/jpeg/webp images", "nomatch": "matches no image"}
    for name, message in expected.items():
        assert any(name in e and message in e for e in errors), (name, errors)
    assert sorted(pngs(tmp_path / "o")) == ["good_s0_00.png", "good_s0_01.png", "good_s0_grid.png"]


def test_existing_outputs_are_kept_without_overwrite(exported, tmp_path):
    lr_image(tmp_path / "a.png")
    lr_image(tmp_path / "b.png", seed=1)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "a_s0_01.png").write_bytes(b"mine")
    r = run_cli(exported / "plain", "--input", tmp_path / "a.png", tmp_path / "b.png", "--n", "2",
                "--out", tmp_path / "o", "--quiet")
    assert r.returncode == 2 and "exists" in r.stderr and "--overwrite" in r.stderr
    assert (tmp_path / "o" / "a_s0_01.png").read_bytes() == b"mine"
    assert sorted(pngs(tmp_path / "o")) == ["a_s0_01.png", "b_s0_00.png", "b_s0_01.png", "b_s0_grid.png"]
    assert run(exported / "plain", "--input", tmp_path / "a.png", "--n", "2", "--out", tmp_path / "o",
               "--overwrite") == 0
    assert (tmp_path / "o" / "a_s0_01.png").read_bytes() != b"mine"
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.startswith(".")]  # no temporary files


def test_bad_model_and_options(exported, tmp_path):
    lr_image(tmp_path / "a.png")
    for args, message in [
        ((tmp_path / "nope", "--input", tmp_path / "a.png"), "Invalid value for 'MODEL'"),
        ((tmp_path, "--input", tmp_path / "a.png"), "meta.json not found"),
        ((exported / "plain", "--input", tmp_path / "a.png", "--n", "0"), "Invalid value for '--n'"),
        ((exported / "plain", "--input", tmp_path / "a.png", "--seed", "-1"), "Invalid value for '--seed'"),
        ((exported / "plain", "--input", tmp_path / "a.png", "--temperature", "hot"), "'--temperature'"),
        ((exported / "plain", "--input", tmp_path / "a.png", "--backend", "tensorrt"), "cannot run TensorRT here"),
    ]:
        r = run_cli(*args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1


def test_runtime_needs_no_torch(exported, tmp_path):
    """The ONNX Runtime path imports neither PyTorch nor the model-building code."""
    lr_image(tmp_path / "a.png")
    code = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
import runtime, runtime.cli.run, runtime.backends, runtime.images.decode, runtime.images.outputs
assert runtime.cli.run.main([{str(exported / 'plain')!r}, "--input", {str(tmp_path / 'a.png')!r}, "--n", "2",
                         "--out", {str(tmp_path / 'o')!r}, "--quiet"]) == 0
banned = [m for m in sys.modules if m.split(".")[0] == "export" or m in ("cvdvae.model", "cvdvae.weights")]
assert not banned, banned
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert len(pngs(tmp_path / "o")) == 3


def test_samples_with_nan_or_inf_are_never_written(tmp_path):
    model = nan_model(tmp_path / "nan")
    Image.fromarray(np.full((2, 2, 3), 90, np.uint8)).save(tmp_path / "a.png")
    r = run_cli(model, "--input", tmp_path / "a.png", "--temperature", "0.8,1.0,1.2,0.5", "--out", tmp_path / "o",
                "--json")
    assert r.returncode == 1, r.stderr
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 1 and "2 of 4 samples contain NaN/Inf" in errors[0] and "samples 1, 2" in errors[0]
    assert sorted(pngs(tmp_path / "o")) == ["a_s0_00.png", "a_s0_03.png"]  # no grid, no broken sample
    assert json.loads(r.stdout)["non_finite_samples"] == 2
    assert run_cli(model, "--input", tmp_path / "a.png", "--temperature", "0.2,0.9", "--out", tmp_path / "p",
                   "--quiet").returncode == 0


@pytest.mark.tensorrt
def test_tensorrt_backend_matches_onnxruntime_and_replays_new_inputs(tmp_path):
    """On a GPU with TensorRT: the engine's samples equal ONNX Runtime's for the same seed,
    including CUDA-graph replays of the same shape with other images, seeds and temperatures."""
    require_hardware(tensorrt_unavailable_reason(), "the TensorRT runtime needs TensorRT and a CUDA GPU")
    out = tmp_path / "trt"
    assert export_main(["--demo", "--out", str(out), "--require-engine", "--quiet"]) == 0
    files = locate(out)
    trt_backend = open_backend(files, "tensorrt")
    ort_backend = open_backend(files, "onnxruntime-cpu")
    rng = np.random.default_rng(0)
    for seed, t in [(0, 0.8), (1, 1.2), (2, 0.0), (3, 0.5)]:  # one shape: capture, then replays
        lr = rng.integers(0, 256, (2, 3, 8, 8)).astype(np.float32)
        temperature = np.full(4, t, np.float32)
        a, b = trt_backend.sample(lr, seed, 3, temperature).samples, ort_backend.sample(lr, seed, 3, temperature).samples
        assert np.isfinite(a).all() and np.abs(a - b).mean() < 1e-4, seed
    assert trt_backend.cuda_graphs == "on"


@pytest.mark.onnxruntime_cuda
def test_onnxruntime_cuda_matches_the_cpu(exported):
    require_hardware(onnxruntime_cuda_unavailable_reason(), "ONNX Runtime's CUDA provider")
    files = locate(exported / "plain")
    cuda = open_backend(files, "onnxruntime-cuda")
    note = cuda.note
    cpu = open_backend(files, "onnxruntime-cpu")
    assert note is None and cuda.provider == "CUDAExecutionProvider" and cpu.provider == "CPUExecutionProvider"
    lr = np.random.default_rng(1).integers(0, 256, (2, 3, 8, 8)).astype(np.float32)
    t = np.array([0.8, 0.0, 1.2], np.float32)
    assert np.abs(cuda.sample(lr, 4, 0, t).samples - cpu.sample(lr, 4, 0, t).samples).max() < 1e-4  # TF32 off


def test_onnxruntime_cuda_without_cuda_says_why(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has a CUDA provider; the test above covers it")
    r = run_cli(exported / "plain", "--input", "x.png", "--backend", "onnxruntime-cuda")
    assert r.returncode == 2 and "has no CUDA provider" in r.stderr and "cvdvae[gpu]" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_the_noise_cache_is_bounded_by_bytes_and_keeps_the_newest():
    from runtime.backends.noise_cache import NoiseCache

    made = []
    cache = NoiseCache(max_bytes=8 * 4 * 1000)  # eight one-sample blocks of 1000 float32

    def block(k):
        made.append(k)
        return np.full((1, 1000), k, np.float32)

    for _ in range(3):  # a run of --n 8 in calls of one sample, three times over
        for k in range(8):
            assert cache.get_or_make((0, k, 1), lambda: block(k))[0, 0] == k
    assert made == list(range(8)) and cache.nbytes == 8 * 4000
    cache.get_or_make((1, 0, 1), lambda: block(99))  # a ninth evicts the oldest only
    assert len(cache) == 8 and cache.nbytes <= cache.max_bytes
    cache.get_or_make((2, 0, 20), lambda: np.zeros((20, 1000), np.float32))  # too big alone: kept alone
    assert len(cache) == 1
