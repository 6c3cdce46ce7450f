"""cvdvae-eval: each score against an independent computation, and the command end to end."""

import json

import numpy as np
import pytest
import torch
from conftest import command, nan_model
from test_train import faces

from runtime.evaluation.scores import score


def oracle_scores(samples, lr, hr, scale):
    """Straight numpy from the definitions, with bicubic-pytorch as the MATLAB downscale."""
    core = pytest.importorskip("bicubic_pytorch.core")
    s = samples.double().numpy()
    lr_psnr = []
    for k in range(len(s)):
        down = core.imresize(torch.from_numpy(s[k] * 255)[None], scale=1 / scale)[0].numpy()
        lr_psnr.append(10 * np.log10(255**2 / np.mean((down - lr.numpy()) ** 2)))
    pairs = [np.mean((s[i] - s[j]) ** 2) for i in range(len(s)) for j in range(i + 1, len(s))]
    truth = hr.numpy() / 255
    psnrs = [10 * np.log10(1 / np.mean((x - truth) ** 2)) for x in s]
    return np.mean(lr_psnr), np.mean(pairs), np.mean(psnrs)


def test_scores_equal_an_independent_computation():
    gen = torch.Generator().manual_seed(0)
    hr = torch.randint(0, 256, (3, 32, 32), generator=gen).double()
    samples = torch.round(torch.rand(4, 3, 32, 32, generator=gen, dtype=torch.float64) * 255) / 255
    lr = torch.round(torch.rand(3, 8, 8, generator=gen, dtype=torch.float64) * 255)
    got = score(samples, lr, hr, 4, lpips=None)
    lr_psnr, apd, fidelity = oracle_scores(samples, lr, hr, 4)
    assert got.lr_psnr == pytest.approx(lr_psnr, abs=1e-3)  # the oracle matches MATLAB to ~5e-5 levels
    assert got.apd_mse == pytest.approx(apd, rel=1e-9)
    assert got.psnr == pytest.approx(fidelity, rel=1e-9)
    assert got.apd_lpips is None and got.lpips is None


def test_identical_samples_have_no_diversity():
    hr = torch.full((3, 32, 32), 100.0)
    sample = (hr / 255).expand(3, -1, -1, -1)
    got = score(sample, torch.full((3, 8, 8), 100.0), hr, 4, lpips=None)
    assert got.apd_mse == 0 and got.ssim == pytest.approx(1.0) and got.lr_psnr > 100


def eval_cli(*args):
    from runtime.cli.eval import main

    return command(main, *args)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from cvdvae.config import preset
    from cvdvae.random_weights import random_model
    from cvdvae.weights import save_safetensors

    root = tmp_path_factory.mktemp("eval")
    cfg = preset("tiny-x4")
    save_safetensors(root / "tiny.safetensors", random_model(cfg, with_posterior=True).state_dict(), cfg)
    return root, faces(root / "faces", count=12)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_eval_is_the_same_on_pytorch_and_the_graph(tiny_weights, tmp_path, backend):
    if backend == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install -e '.[cpu]')")
    root, data = tiny_weights
    from runtime.cli.export import main as export_main

    assert export_main(["--checkpoint", str(root / "tiny.safetensors"), "--out", str(tmp_path / "e"), "--onnx-only",
                        "--quiet", "--no-validate"]) == 0
    common = ("--data", data, "--split", "all", "--count", "5", "--n", "3", "--no-lpips", "--quiet")
    a = eval_cli(root / "tiny.safetensors", *common, "--out", tmp_path / "torch.json")
    b = eval_cli(tmp_path / "e", *common, "--backend", backend, "--json")  # the same results on stdout
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    ta, tb = json.loads((tmp_path / "torch.json").read_text()), json.loads(b.stdout)
    assert ta["backend"] == "torch" and tb["backend"] == backend
    assert ta["protocol"] == tb["protocol"] and ta["protocol"]["inputs"] == 5
    for key in ("lr_psnr", "apd_mse", "psnr", "ssim"):
        assert ta["metrics"][key] == pytest.approx(tb["metrics"][key], rel=1e-3), key


def test_eval_with_lpips(tiny_weights, tmp_path):
    from cvdvae.hub.lpips import default_weights_path

    if not default_weights_path().is_file():
        pytest.skip("LPIPS weights not fetched (cvdvae fetch lpips-alex)")
    root, data = tiny_weights
    r = eval_cli(root / "tiny.safetensors", "--data", data, "--count", "2", "--n", "2", "--out", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "r.json").read_text())["metrics"]
    assert metrics["apd_lpips"] > 0 and metrics["lpips"] > 0
    assert "LR-PSNR" in r.stdout and "BRISQUE" in r.stdout


def test_eval_refusals(tiny_weights, tmp_path):
    root, data = tiny_weights
    r = eval_cli(root / "tiny.safetensors", "--data", tmp_path / "none", "--no-lpips")
    assert r.returncode == 2 and "Invalid value for '--data'" in r.stderr
    r = eval_cli(root / "tiny.safetensors", "--data", data, "--backend", "tensorrt", "--no-lpips")
    assert r.returncode == 2 and "only --backend torch" in r.stderr


def test_eval_counts_samples_with_nan_or_inf_and_fails(tmp_path):
    """t = 1.2 makes the crafted graph's samples NaN: none is scored, all are counted, exit 1."""
    model = nan_model(tmp_path / "nan")
    data = faces(tmp_path / "hr", count=3, size=4)
    r = eval_cli(model, "--data", data, "--split", "all", "--count", "3", "--n", "2", "--temperature", "1.2",
                 "--no-lpips", "--quiet", "--out", tmp_path / "r.json")
    assert r.returncode == 1 and "6 samples contained NaN/Inf" in r.stderr
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["non_finite_samples"] == 6 and results["protocol"]["inputs"] == 0


def test_eval_levels_and_brisque_per_temperature(tiny_weights, tmp_path):
    """--levels all: at the lowest level the samples are the plain run's (the same APD); at the top level
    only the finest groups and the pixel noise vary, so the spread is below the lowest level's; the
    LR-PSNR is reported at every level; BRISQUE per temperature."""
    from cvdvae.hub.assets import fetched_file

    if fetched_file("brisque") is None:
        pytest.skip("BRISQUE model not fetched (cvdvae fetch brisque)")
    root, data = tiny_weights
    r = eval_cli(root / "tiny.safetensors", "--data", data, "--split", "all", "--count", "2", "--n", "3",
                 "--temperature", "0.5,1.0,1.0", "--levels", "all", "--no-lpips", "--out", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    levels = result["levels"]
    assert list(levels) == ["1", "4", "8", "16", "32"]
    assert levels["1"]["apd_mse"] == pytest.approx(result["metrics"]["apd_mse"], rel=1e-12)
    assert levels["32"]["apd_mse"] < levels["1"]["apd_mse"] and levels["32"]["mean_std"] < levels["1"]["mean_std"]
    assert all(row["lr_psnr"] is not None and row["brisque"] is not None for row in levels.values())
    assert list(result["brisque_by_temperature"]) == ["0.5", "1"]
    r = eval_cli(root / "tiny.safetensors", "--data", data, "--levels", "12", "--no-lpips")
    assert r.returncode == 2 and "expected 'all' or levels of this model (1, 4, 8, 16, 32 px)" in r.stderr
