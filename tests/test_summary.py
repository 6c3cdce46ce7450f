"""The samples' mean and spread: against numpy on the stacked samples, the colour map against
viridis's published stops and CIE lightness, and the command, API and eval end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import copy_export
from PIL import Image

from runtime.images.colormap import ScaleBar, colourise
from runtime.images.summary import FrameMoments, Moments, summarise

VIRIDIS_FIRST, VIRIDIS_LAST = (0x44, 0x01, 0x54), (0xFD, 0xE7, 0x25)  # matplotlib's viridis, both ends


# viridis(9): matplotlib's viridis at 0, 1/8, ..., 1, as published (R's viridisLite prints the same hex)
VIRIDIS_9 = ["440154", "472D7B", "3B528B", "2C728E", "21908C", "27AD81", "5DC863", "AADC32", "FDE725"]


def viridis(fraction: np.ndarray) -> np.ndarray:
    """The published stops interpolated linearly per channel with ``np.interp``, as 0..255 floats."""
    stops = np.array([[int(h[i:i + 2], 16) for i in (0, 2, 4)] for h in VIRIDIS_9], np.float64)
    where = np.linspace(0, 1, len(stops))
    return np.stack([np.interp(np.clip(fraction, 0, 1), where, stops[:, c]) for c in range(3)], axis=-1)


def numpy_spread(stack: np.ndarray, colour: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """numpy on the stacked samples [n, H, W, C]: the mean, and the RMS over the colour channels of
    each channel's population standard deviation."""
    mean = np.mean(stack.astype(np.float64), axis=0)
    std = np.sqrt(np.mean(np.std(stack.astype(np.float64), axis=0)[..., :colour] ** 2, axis=-1))
    return mean, std


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_streamed_summary_equals_numpy_on_the_stacked_samples(n):
    stack = np.random.default_rng(n).integers(0, 256, (n, 24, 20, 3), dtype=np.uint8)
    got = summarise(iter(stack))  # one sample at a time
    mean, std = numpy_spread(stack)
    assert got.count == n
    np.testing.assert_allclose(got.mean, mean, rtol=0, atol=1e-4)  # float32 of an exact mean
    np.testing.assert_allclose(got.std, std, rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(got.mean_pixels(), np.round(mean).astype(np.uint8))


def test_a_large_n_stays_exact_where_float32_sums_would_drift():
    """10,000 samples of 255 and 254 alternating: the mean is 254.5 and the spread 0.5 exactly."""
    moments = Moments()
    for k in range(10_000):
        moments.add(np.full((2, 2, 3), 255 - k % 2, np.uint8))
    got = moments.summary()
    assert got.mean.tolist() == np.full((2, 2, 3), 254.5).tolist() and got.std.tolist() == np.full((2, 2), 0.5).tolist()


def test_grey_and_alpha_channels():
    """A grey image's spread is its one channel's; an alpha channel is averaged but has no spread."""
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (5, 8, 8), dtype=np.uint8)
    got = summarise(grey)
    np.testing.assert_allclose(got.std, np.std(grey.astype(np.float64), axis=0), atol=1e-4)
    assert got.mean_pixels().shape == (8, 8)
    rgba = rng.integers(0, 256, (5, 8, 8, 4), dtype=np.uint8)
    rgba[..., 3] = rng.integers(0, 256, (5, 8, 8))  # a varying alpha must not count
    np.testing.assert_allclose(summarise(rgba).std, numpy_spread(rgba[..., :3])[1], atol=1e-4)


def test_mixed_shapes_and_non_8_bit_samples_are_refused():
    moments = Moments()
    moments.add(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        moments.add(np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(TypeError, match="8-bit"):
        moments.add(np.zeros((4, 4, 3), np.float32))


def test_frames_that_differ_in_regions_equal_numpy_on_the_whole_frames():
    """Whole frames that share a background and differ inside two overlapping rectangles: the mean
    and spread kept per region equal numpy's over the whole stacked frames, everywhere."""
    rng = np.random.default_rng(2)
    background = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    regions = [(slice(5, 20), slice(3, 30)), (slice(12, 35), slice(25, 48))]
    frames = []
    for _ in range(6):
        frame = background.copy()
        for rows, cols in regions:
            frame[rows, cols] = rng.integers(0, 256, frame[rows, cols].shape)
        frames.append(frame)
    moments = FrameMoments(regions)
    for frame in frames:
        moments.add(frame)
    got = moments.summary()
    mean, std = numpy_spread(np.stack(frames))
    np.testing.assert_allclose(got.mean, mean, atol=1e-4)
    np.testing.assert_allclose(got.std, std, atol=1e-4)
    np.testing.assert_array_equal(got.mean_pixels(), np.round(mean).astype(np.uint8))
    picture = got.std_pixels()
    assert picture.shape[:2] == (40 + ScaleBar(50).height, 50)
    assert picture[0, 0].tolist() == list(VIRIDIS_FIRST)  # outside both regions: no spread


def test_the_colour_map_ends_at_viridis_and_its_lightness_rises():
    """Viridis's published ends, and CIE L* (sRGB -> linear -> Y -> L*, written out here) rising
    all the way: the map reads in grey, dark to light."""
    ramp = colourise(np.linspace(0, 1, 256)[None, :], 1.0)[0].astype(np.float64) / 255
    assert ramp[0].round(6).tolist() == (np.array(VIRIDIS_FIRST) / 255).round(6).tolist()
    assert ramp[-1].round(6).tolist() == (np.array(VIRIDIS_LAST) / 255).round(6).tolist()
    assert np.abs(ramp * 255 - viridis(np.linspace(0, 1, 256))).max() <= 0.5  # the stops, linearly between
    linear = np.where(ramp <= 0.04045, ramp / 12.92, ((ramp + 0.055) / 1.055) ** 2.4)
    luminance = linear @ np.array([0.2126, 0.7152, 0.0722])
    lightness = 116 * np.cbrt(luminance) - 16
    assert np.all(np.diff(lightness) > -0.3) and lightness[-1] - lightness[0] > 60


def test_two_alternating_images_give_a_known_spread_its_colours_and_its_scale():
    """Samples alternating between two constant images that differ by 40 levels on the left half
    and not at all on the right: the spread is 20 levels on the left (|a - b| / 2) and 0 on the
    right, so the map is viridis's last colour on the left and its first on the right, and the
    scale bar reads 0 to 20 levels."""
    a = np.full((64, 96, 3), 100, np.uint8)
    b = a.copy()
    b[:, :48] += 40
    got = summarise([a, b] * 4)
    assert np.allclose(got.std[:, :48], 20.0) and np.allclose(got.std[:, 48:], 0.0)
    assert got.top == 20.0
    picture = got.std_pixels()
    bar = ScaleBar(96)
    assert picture.shape == (64 + bar.height, 96, 3)
    assert (picture[:64, :48] == VIRIDIS_LAST).all() and (picture[:64, 48:] == VIRIDIS_FIRST).all()
    assert bar.labels(got.top, "levels") == ("0", "20 levels")
    strip = picture[64:]
    text = (strip.max(axis=-1) - strip.min(axis=-1) < 8) & (strip.max(axis=-1) < 160)  # grey ink, not the ramp
    assert text[:, :8].any() and text[:, -8:].any(), "both ends labelled"
    colours = {tuple(c) for c in strip.reshape(-1, 3).tolist()}
    assert VIRIDIS_FIRST in colours and VIRIDIS_LAST in colours, "the ramp spans the map"


def test_identical_samples_map_to_the_bottom_of_a_one_level_scale():
    got = summarise([np.full((8, 8, 3), 7, np.uint8)] * 3)
    assert got.top == 1.0 and (got.std_pixels()[:8] == VIRIDIS_FIRST).all()


# ---------------------------------------------------------------- the API and the command
@pytest.fixture(scope="module")
def demo(tmp_path_factory, demo_export):
    return copy_export(demo_export, tmp_path_factory.mktemp("summary") / "engine")


def face(tmp_path, seed=0):
    path = tmp_path / f"face{seed}.png"
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    return path


def read(path):
    return np.asarray(Image.open(path))


def test_the_output_objects_mean_and_std_are_numpys_on_its_samples(demo, tmp_path):
    from runtime.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(demo)
    out = pipe([face(tmp_path, 0), face(tmp_path, 1)], n=5, seed=2)
    assert out.mean.shape == (2, 32, 32, 3) and out.std.shape == (2, 32, 32)
    for i in range(2):
        mean, std = numpy_spread(out.samples[i])
        np.testing.assert_allclose(out.mean[i], mean, atol=1e-4)
        np.testing.assert_allclose(out.std[i], std, atol=1e-4)
    grid = out.grid(0, summary=True)
    # 1 LR tile + 5 samples + mean + std map in one row of 8 cells, 32 px wide with 4 px gaps
    assert grid.shape[1] == 8 * 32 + 7 * 4
    first_mean = np.round(numpy_spread(out.samples[0])[0]).astype(np.uint8)
    np.testing.assert_array_equal(grid[:32, 6 * 36:6 * 36 + 32], first_mean)


def test_run_summary_is_numpys_on_the_written_samples_and_passes_give_the_same_bytes(demo, tmp_path):
    """n = 70 is drawn in two passes (64 + 6): each sample file is what one Pipeline call with
    n = 70 gives, and the mean and std files are numpy's over the 70 sample files read back."""
    from runtime.cli.run import main as run_main
    from runtime.images.outputs import png_bytes
    from runtime.pipeline import Pipeline
    from runtime.run_files import SAMPLES_PER_PASS

    n = 70
    assert n > SAMPLES_PER_PASS
    lr = face(tmp_path, 3)
    out = tmp_path / "out"
    assert run_main([str(demo), "--input", str(lr), "--n", str(n), "--seed", "4", "--summary", "--out", str(out),
                     "--quiet"]) == 0
    whole = Pipeline.from_pretrained(demo)(lr, n=n, seed=4)
    for k in (0, 63, 64, 69):
        assert (out / f"face3_s4_{k:02d}.png").read_bytes() == png_bytes(whole.samples[0, k])
    stack = np.stack([read(out / f"face3_s4_{k:02d}.png") for k in range(n)])
    mean, std = numpy_spread(stack)
    np.testing.assert_array_equal(read(out / "face3_s4_mean.png"), np.round(mean).astype(np.uint8))
    expected = viridis(std / max(std.max(), 1.0))
    assert np.abs(read(out / "face3_s4_std.png")[:32].astype(int) - expected).max() <= 1  # rounding apart
    grid = read(out / "face3_s4_grid.png")
    assert grid.shape[0] > 10 * 32, "the grid holds all 70 samples, the mean and the std map"


def test_run_refuses_to_overwrite_an_existing_summary(demo, tmp_path):
    from runtime.cli.run import main as run_main

    lr = face(tmp_path, 5)
    (tmp_path / "face5_s0_std.png").write_bytes(b"mine")
    code = run_main([str(demo), "--input", str(lr), "--n", "2", "--summary", "--out", str(tmp_path), "--quiet"])
    assert code == 2 and (tmp_path / "face5_s0_std.png").read_bytes() == b"mine"
    assert not (tmp_path / "face5_s0_00.png").exists()


def test_eval_reports_the_means_psnr_and_the_spreads_correlation_with_its_error(tmp_path):
    """For one input: the PSNR of the unrounded mean and Pearson's r (scipy) between the std map
    and the RMS-over-channels error of the mean, from the samples and the HR image alone."""
    stats = pytest.importorskip("scipy.stats")
    from runtime.evaluation.scores import spread_scores

    rng = np.random.default_rng(7)
    hr = rng.integers(0, 256, (16, 16, 3)).astype(np.float64)
    noise_scale = np.linspace(1, 40, 16)[None, :, None]  # the samples spread more to the right
    stack = np.clip(np.round(hr + rng.normal(0, 1, (9, 16, 16, 3)) * noise_scale), 0, 255).astype(np.uint8)
    mean_psnr, r = spread_scores(summarise(stack), hr)
    mean = stack.astype(np.float64).mean(axis=0)
    assert mean_psnr == pytest.approx(10 * np.log10(255 ** 2 / np.mean((mean - hr) ** 2)), abs=1e-4)
    error = np.sqrt(np.mean((mean - hr) ** 2, axis=-1))
    expected = stats.pearsonr(numpy_spread(stack)[1].ravel(), error.ravel()).statistic
    assert r == pytest.approx(expected, abs=1e-5) and r > 0.5
    single = [10 * np.log10(255 ** 2 / np.mean((s - hr) ** 2)) for s in stack.astype(np.float64)]
    assert mean_psnr > max(single), "the mean beats every sample"
    assert spread_scores(summarise(stack[:1]), hr)[1] is None  # one sample has no spread


def test_eval_command_prints_and_writes_the_new_numbers(demo, tmp_path):
    from runtime.cli.eval import main as eval_main

    data = tmp_path / "hr"
    data.mkdir()
    for seed in range(2):
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            data / f"{seed}.png")
    assert eval_main([str(demo), "--data", str(data), "--split", "all", "--count", "2", "--n", "3", "--no-lpips",
                      "--out", str(tmp_path / "eval.json"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert metrics["mean_psnr"] > metrics["psnr"]
    assert -1 <= metrics["std_error_corr"] <= 1
