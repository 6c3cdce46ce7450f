"""Noise recipes (``cvdvae.noise_recipe``): keep a sample's coarse levels and vary the finer ones, and
a temperature per level, on every backend.

Oracles: the demo model in PyTorch on noise composed here by hand, block by block from the
contract's layout (the reference sample's slices below the level, fresh ones above, the prior's ε
scaled); the model's own z seen through forward hooks; the scalar-temperature path; the plain seed's
bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fakes import FakeCuda, FakeTensorRT, engine_spec, toy_meta, toy_model, write_plan

from cvdvae.config import preset
from cvdvae.errors import CVDVAEError
from cvdvae.noise_recipe import recipe_for
from cvdvae.random_weights import DEMO_PRESET, demo_model
from cvdvae.seeding import noise_numpy, noise_torch
from runtime.backends import open_backend
from runtime.model_files import locate
from runtime.sampling import Job, sample_jobs

SEED, N = 7, 4
T = np.array([0.8, 1.0, 0.6, 0.9], np.float32)


def hand_noise(cfg, seed, n, like=None, like_seed=None, vary_from=None, temperature_at=None, first=0,
               make=noise_torch):
    """The contract's rule, block by block: slices of blocks coarser than ``vary_from`` are the
    reference's, sample ``like`` is the reference whole, the prior's blocks (>= ky) scaled by the
    factor of the highest level at or below theirs."""
    from cvdvae.noise_layout import NoiseLayout

    layout = NoiseLayout.from_config(cfg)
    noise = make(seed, n, layout.dim, first)
    reference = make(seed if like_seed is None else like_seed, 1, layout.dim, like)[0] if like is not None else None
    for block in layout.latents:
        part = slice(block.offset, block.offset + block.size)
        if reference is not None and block.res < vary_from:
            noise[:, part] = reference[part]
    if reference is not None and 0 <= like - first < n:
        noise[like - first] = reference
    for block in layout.latents:
        below = [level for level in (temperature_at or {}) if level <= block.res]
        if block.block >= cfg.ky and below:
            noise[:, block.offset:block.offset + block.size] *= temperature_at[max(below)]
    return noise


@pytest.fixture(scope="module")
def model():
    return demo_model()


@pytest.fixture(scope="module")
def lr():
    return np.random.default_rng(3).integers(0, 256, (1, 3, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module", params=["openvino", "onnxruntime"])
def cpu_backend(request, demo_export):
    return open_backend(locate(demo_export), request.param)


def pytorch(model, lr, noise, t):
    with torch.inference_mode():
        return model(torch.from_numpy(lr), noise[None], torch.from_numpy(np.asarray(t, np.float32))[None]).numpy()


@pytest.mark.parametrize("setting", [dict(like=2, vary_from=16), dict(like=1, like_seed=11, vary_from=8),
                                     dict(temperature_at={16: 0.5, 32: 0.2}), dict(temperature_at={8: 0.5}),
                                     dict(like=3, vary_from=32, temperature_at={32: 1.5})])
def test_every_cpu_backend_samples_the_hand_composed_noise(cpu_backend, model, lr, setting):
    got = cpu_backend.sample_rows(lr, [recipe_for(SEED, **setting)], 0, T[None]).samples
    want = pytorch(model, lr, hand_noise(model.config, SEED, N, **setting), T)
    assert np.abs(got - want).max() <= 1e-4


def test_below_the_level_every_samples_z_is_the_references_and_above_some_differ(model, lr):
    """PyTorch's own z of each decoder block (the input of its z_proj), seen through hooks."""
    from runtime.backends.torch import TorchBackend

    seen: dict[int, torch.Tensor] = {}
    hooks = [block.z_proj.register_forward_pre_hook(lambda module, args, i=i: seen.__setitem__(i, args[0].clone()))
             for i, block in enumerate(model.decoder.dec_blocks)]
    try:
        TorchBackend(model).sample_rows(lr, [recipe_for(SEED, like=2, vary_from=16)], 0, T[None])
        varied = dict(seen)
        TorchBackend(model).sample_rows(lr, [SEED], 0, T[None])
    finally:
        for hook in hooks:
            hook.remove()
    levels = [block.res for block in model.decoder.dec_blocks]
    for i, level in enumerate(levels):
        z = varied[i].reshape(N, -1)
        if level < 16:
            assert all(torch.equal(z[k], z[2]) for k in range(N)), f"block {i} at {level} px varies"
            assert torch.equal(z[2], seen[i].reshape(N, -1)[2])  # the reference's own z
    assert any(not torch.equal(varied[i].reshape(N, -1)[0], varied[i].reshape(N, -1)[1])
               for i, level in enumerate(levels) if level >= 16)


def test_the_lowest_level_gives_todays_bytes(cpu_backend, lr):
    today = cpu_backend.sample_rows(lr, [SEED], 0, T[None]).samples
    lowest = cpu_backend.sample_rows(lr, [recipe_for(SEED, like=2, vary_from=1)], 0, T[None]).samples
    assert np.array_equal(today, lowest)


def test_a_constant_factor_is_the_scalar_temperature_times_it(cpu_backend, lr):
    """{first prior level: f} scales every prior group: t·f as a scalar, to float rounding; t = 0 stays the mean."""
    first_prior = preset(DEMO_PRESET).decoder_layers[preset(DEMO_PRESET).ky][0]
    scaled = cpu_backend.sample_rows(lr, [recipe_for(SEED, temperature_at={first_prior: 0.5})], 0, T[None]).samples
    scalar = cpu_backend.sample_rows(lr, [SEED], 0, T[None] * np.float32(0.5)).samples
    assert np.abs(scaled - scalar).max() <= 1e-5
    zero = np.zeros((1, N), np.float32)
    assert np.array_equal(cpu_backend.sample_rows(lr, [recipe_for(SEED, temperature_at={first_prior: 0.3})], 0,
                                                  zero).samples, cpu_backend.sample_rows(lr, [SEED], 0, zero).samples)


class Recording:
    """Records each call's rows; a sample is its row's noise (what the backend was given)."""

    max_batch, max_n = 4, 8

    def __init__(self, rows_independent):
        self.rows_independent, self.calls = rows_independent, []

    def sample_rows(self, lr, seeds, first_sample, temperature):
        from runtime.backends.interface import sampled

        self.calls.append(tuple(seeds))
        return sampled(np.zeros((len(seeds), temperature.shape[1], 3, 1, 1), np.float32))


def test_two_jobs_of_one_seed_with_different_recipes_never_share_noise(demo_export, lr):
    """Grouping: one seed with two recipes is two noises (never one call's shared block where rows are
    not independent). Caching: each recipe its own block, and each job's samples its own recipe's."""
    plain, kept, scaled = SEED, recipe_for(SEED, like=1, vary_from=16), recipe_for(SEED, temperature_at={16: 0.5})
    jobs = [Job(lr[0], noise, T) for noise in (plain, kept, scaled, kept)]
    recording = Recording(rows_independent=False)
    sample_jobs(recording, jobs)
    assert recording.calls == [(plain,), (kept,), (scaled,), (kept,)]
    backend = open_backend(locate(demo_export), "openvino")
    results = sample_jobs(backend, jobs)
    assert {key for key in (( noise, 0, N) for noise in (plain, kept, scaled))} <= set(backend._calls.noise._entries)
    assert len(backend._calls.noise) == 3
    for job, result in zip(jobs, results):
        alone = open_backend(locate(demo_export), "openvino").sample_rows(lr, [job.seed], 0, T[None]).samples[0]
        assert np.array_equal(result.samples, alone)
    assert not np.array_equal(results[0].samples, results[1].samples)
    assert not np.array_equal(results[1].samples, results[2].samples)


def test_the_gpu_backend_composes_the_recipe_on_its_device(tmp_path):
    """TensorRT through the recording fakes: the toy network sees the hand-composed noise, and a
    plain seed and a recipe of the same seed are two blocks on the device."""
    cfg = preset(DEMO_PRESET)
    from cvdvae.noise_layout import NoiseLayout

    dim = NoiseLayout.from_config(cfg).dim
    cuda = FakeCuda()
    trt = FakeTensorRT(cuda)
    meta = {**toy_meta(noise_dim=dim), "config": cfg.to_dict()}
    files = write_plan(tmp_path / "engine", engine_spec(noise_dim=dim), meta, trt)
    from runtime.backends.tensorrt import TensorRTBackend

    backend = TensorRTBackend(files, trt=trt, cuda=trt.cuda)
    lr = np.random.default_rng(1).integers(0, 256, (1, 3, 2, 2)).astype(np.float32)
    t = np.array([[0.8, 0.4, 1.0]], np.float32)
    recipe = recipe_for(5, like=1, like_seed=9, vary_from=8, temperature_at={16: 0.5})
    got = backend.sample_rows(lr, [recipe], 0, t).samples
    noise = hand_noise(cfg, 5, 3, like=1, like_seed=9, vary_from=8, temperature_at={16: 0.5},
                       make=noise_numpy)
    np.testing.assert_allclose(got, toy_model(lr, noise[None], t, 4), atol=1e-6)
    plain = backend.sample_rows(lr, [5], 0, t).samples
    np.testing.assert_allclose(plain, toy_model(lr, noise_numpy(5, 3, dim)[None], t, 4), atol=1e-6)
    assert len(backend._noise) == 2


@pytest.mark.parametrize("setting, message", [
    (dict(like=2, vary_from=12), "vary_from=12 is not a level of this model: its levels are 1, 4, 8, 16, 32 px"),
    (dict(like=4, vary_from=16), "like=4 is out of range: the samples are 0 .. 3"),
    (dict(like=-1, vary_from=16), "like=-1 is out of range"),
    (dict(like=2), "like needs vary_from"),
    (dict(vary_from=16), "vary_from needs like"),
    (dict(like=1, vary_from=16, like_seed=-3), "like_seed=-3 must be a whole number in 0 .. 2^64-1"),
    (dict(temperature_at={16: 10.5}), "factor 10.5 at 16 px is out of range: a number from 0 to 10"),
    (dict(temperature_at={16: float("nan")}), "is out of range"),
    (dict(temperature_at={64: 0.5}), "level 64 is not a level of this model"),
    (dict(temperature_at={4: 0.5, 16: 1.0}), "level 4 px reaches only LR-encoder groups, which are untempered: "
                                             "the first prior level is 16 px"),
    (dict(temperature_at=[0.5]), "temperature_at=[0.5] must map levels (px) to factors"),
])
def test_bad_settings_are_one_clear_error(demo_export, setting, message):
    from cvdvae import Pipeline

    pipe = Pipeline.from_pretrained(demo_export, "onnxruntime")
    with pytest.raises(CVDVAEError) as err:
        pipe(np.zeros((8, 8, 3), np.uint8), n=N, seed=SEED, **setting)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_run_writes_the_pipelines_samples_of_the_recipe(demo_export, tmp_path):
    """``cvdvae run --like --like-seed --vary-from --temperature-at --summary``: the library's samples, as files."""
    from PIL import Image

    from cvdvae import Pipeline
    from runtime.cli.run import main as run_main

    face = np.random.default_rng(4).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(face).save(tmp_path / "f.png")
    flags = ["--like", "1", "--like-seed", "4", "--vary-from", "8", "--temperature-at", "16=0.5,32=0.25"]
    assert run_main([str(demo_export), "--input", str(tmp_path / "f.png"), "--n", "3", "--seed", "2", "--out",
                     str(tmp_path / "o"), "--backend", "onnxruntime", "--summary", "--quiet", *flags]) == 0
    want = Pipeline.from_pretrained(demo_export, "onnxruntime")(face, n=3, seed=2, like=1, like_seed=4, vary_from=8,
                                                               temperature_at={16: 0.5, 32: 0.25})
    for k in range(3):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / f"f_s2_{k:02d}.png")), want.samples[0, k])
    assert (tmp_path / "o" / "f_s2_std.png").is_file()


@pytest.mark.parametrize("flags, message", [
    (["--like", "3", "--vary-from", "12"], "--vary-from 12 is not a level of this model"),
    (["--like", "5", "--vary-from", "16"], "--like 5 is out of range: the samples are 0 .. 3"),
    (["--temperature-at", "16=x"], "'16=x': expected LEVEL=FACTOR"),
    (["--temperature-at", "8=0.5,16=1"], "--temperature-at level 8 px reaches only LR-encoder groups"),
])
def test_run_refuses_bad_level_flags_in_one_line(demo_export, tmp_path, capsys, flags, message):
    from runtime.cli.run import main as run_main

    (tmp_path / "f.png").write_bytes(b"")  # never read: the flags are refused first
    assert run_main([str(demo_export), "--input", str(tmp_path / "f.png"), "--n", "4", "--out", str(tmp_path / "o"),
                     *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "o").exists()


def test_every_face_of_a_photo_keeps_the_references_levels(demo_export, tmp_path):
    """--faces: sample ``like`` of each face is the plain run's own sample; the others are new."""
    from PIL import Image

    from cvdvae.hub.home import cvdvae_home
    from runtime.cli.run import main as run_main

    skimage = pytest.importorskip("skimage")
    if not (cvdvae_home() / "mtcnn" / "onet.onnx").is_file():
        pytest.skip("MTCNN graphs not fetched (cvdvae fetch mtcnn)")
    photo = __import__("pathlib").Path(skimage.__file__).parent / "data" / "astronaut.png"
    common = [str(demo_export), "--input", str(photo), "--faces", "--n", "3", "--upscale", "1", "--quiet"]
    assert run_main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert run_main([*common, "--out", str(tmp_path / "kept"), "--like", "1", "--vary-from", "16"]) == 0

    def face(folder, k):
        return np.asarray(Image.open(tmp_path / folder / f"astronaut_face0_s0_{k:02d}.png"))

    assert np.array_equal(face("kept", 1), face("plain", 1))
    assert not np.array_equal(face("kept", 0), face("plain", 0))
    assert not np.array_equal(face("kept", 0), face("kept", 2))
