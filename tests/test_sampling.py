"""Sampling from explicit noise: parity with the official sampler and the noise contract."""

import math

import numpy as np
import pytest
import torch

from cvdvae.config import preset
from cvdvae.dmol import normal_to_uniform, sample_dmol
from cvdvae.noise_layout import NoiseLayout
from cvdvae.random_weights import random_model
from cvdvae.weights import load_model
from conftest import custom_config, make_inputs

CONFIGS = {"tiny": lambda: preset("tiny-x4"), "custom": custom_config}


@pytest.fixture(params=list(CONFIGS), scope="module")
def model(request):
    return random_model(CONFIGS[request.param](), seed=1)


def run(model, *inputs, **kw):
    with torch.inference_mode():
        return model(*inputs, **kw)


def test_matches_the_official_sampler(official_case):
    """The reference computed Phi in float64; float32 stays within 1e-4 on >= 99.9%."""
    ckpt, yaml_path, case = official_case
    model = load_model(ckpt, config=yaml_path)
    sr = run(model, *(torch.from_numpy(case[k]) for k in ("lr", "noise", "temperature"))).numpy()
    err = np.abs(sr - case["expected"])
    assert sr.shape == case["expected"].shape
    assert (err <= 1e-4).mean() >= 0.999
    assert err.max() < 1e-3


def test_noise_dim_formula():
    assert NoiseLayout.from_config(preset("ffhq256")).dim == 4_470_816 + 13 * 65_536 == 5_322_784
    cfg = custom_config()
    layout = NoiseLayout.from_config(cfg)
    latent = sum(cfg.zdim * r * r for r, _ in cfg.decoder_layers)
    assert layout.pixel_offset == latent
    assert layout.dim == latent + (cfg.num_mixtures + 3) * cfg.image_size ** 2
    assert layout.block_offsets()[1] == cfg.zdim  # block 0 is at resolution 1


def test_output_shape_and_range(model):
    cfg = model.config
    sr = run(model, *make_inputs(cfg, 2, 3))
    assert sr.shape == (2, 3, 3, cfg.image_size, cfg.image_size)
    assert sr.dtype == torch.float32 and sr.min() >= 0 and sr.max() <= 1
    assert torch.isfinite(sr).all()


def capture_states(model, *inputs):
    """Each decoder block's new state and its z, in block order."""
    states, zs, hooks = [], [], []
    for block in model.decoder.dec_blocks:
        hooks.append(block.resnet.register_forward_hook(lambda m, i, o: states.append(o.clone())))
        hooks.append(block.z_proj.register_forward_pre_hook(lambda m, i: zs.append(i[0].clone())))
    try:
        sr = run(model, *inputs)
    finally:
        for h in hooks:
            h.remove()
    return sr, states, zs


def test_block_slice_only_affects_that_block_and_later(model):
    lr, noise, t = make_inputs(model.config, 1, 2)
    layout = model.noise_layout
    _, base_states, base_z = capture_states(model, lr, noise, t)
    for s in layout.latents:
        perturbed = noise.clone()
        perturbed[:, 1, s.offset:s.offset + s.size] += 1.0  # sample 1 only
        _, states, zs = capture_states(model, lr, perturbed, t)
        for j in range(len(states)):
            same_sample0 = torch.equal(states[j][0], base_states[j][0])
            assert same_sample0, "another sample's noise leaked in"
            if j < s.block:
                assert torch.equal(states[j], base_states[j]) and torch.equal(zs[j], base_z[j])
        assert not torch.equal(zs[s.block][1], base_z[s.block][1])
        # z moves by exactly sigma * delta: the slice is this block's (zdim, r, r) tensor in C order.
        assert torch.all(zs[s.block][1] != base_z[s.block][1])


def test_pixel_noise_is_per_pixel(model):
    lr, noise, t = make_inputs(model.config, 1, 1, t=1.0)
    layout = model.noise_layout
    size, m = layout.image_size, model.config.num_mixtures
    base, states, _ = capture_states(model, lr, noise, t)
    for channel, y, x in [(0, 1, 2), (m - 1, 5, 3), (m, 4, 4), (m + 2, 7, 0)]:
        perturbed = noise.clone()
        perturbed[0, 0, layout.pixel_offset + (channel * size + y) * size + x] = -6.0 if channel < m else 3.0
        sr, new_states, _ = capture_states(model, lr, perturbed, t)
        assert all(torch.equal(a, b) for a, b in zip(states, new_states))
        changed = (sr != base).any(dim=2)[0, 0]
        assert changed.nonzero().tolist() in ([[y, x]], [])
        if channel >= m:  # a logistic value always moves its colour (unless clamped at the edge)
            assert changed[y, x] or sr[0, 0, channel - m, y, x] in (0.0, 1.0)


def test_normal_to_uniform_matches_the_closed_form():
    g = torch.linspace(-6, 6, 20001)
    expected = (0.5 * torch.special.erfc(-g.double() / math.sqrt(2))).clamp(1e-5, 1 - 1e-5)
    assert torch.allclose(normal_to_uniform(g).double(), expected, atol=2e-7, rtol=0)
    assert normal_to_uniform(torch.tensor([-40.0, 40.0])).tolist() == pytest.approx([1e-5, 1 - 1e-5])


def reference_dmol(l_nchw, u_mix, u_log, nr_mix):
    """An independent transcription of the official NHWC one-hot sampler, in float64."""
    l = l_nchw.permute(0, 2, 3, 1).double()
    xs = list(l.shape[:-1]) + [3]
    logit_probs = l[..., :nr_mix]
    l = l[..., nr_mix:].reshape(xs + [nr_mix * 3])
    amax = torch.argmax(logit_probs - torch.log(-torch.log(u_mix.permute(0, 2, 3, 1).double())), dim=3)
    sel = torch.nn.functional.one_hot(amax, nr_mix).double().reshape(xs[:-1] + [1, nr_mix])
    means = (l[..., :nr_mix] * sel).sum(4)
    log_scales = torch.clamp((l[..., nr_mix:2 * nr_mix] * sel).sum(4), min=-7.0)
    coeffs = (torch.tanh(l[..., 2 * nr_mix:3 * nr_mix]) * sel).sum(4)
    u = u_log.permute(0, 2, 3, 1).double()
    x = means + torch.exp(log_scales) * (torch.log(u) - torch.log(1.0 - u))
    x0 = x[..., 0].clamp(-1, 1)
    x1 = (x[..., 1] + coeffs[..., 0] * x0).clamp(-1, 1)
    x2 = (x[..., 2] + coeffs[..., 1] * x0 + coeffs[..., 2] * x1).clamp(-1, 1)
    return torch.stack([x0, x1, x2], dim=1)


@pytest.mark.parametrize("m", [1, 3, 10])
def test_dmol_matches_the_official_formula(m):
    gen = torch.Generator().manual_seed(m)
    params = torch.randn(2, 10 * m, 6, 5, generator=gen) * 2
    noise = torch.randn(2, m + 3, 6, 5, generator=gen)
    u = normal_to_uniform(noise)
    ours = sample_dmol(params, noise, m)
    ref = reference_dmol(params, u[:, :m], u[:, m:], m)
    assert torch.allclose(ours.double(), ref, atol=1e-5, rtol=0)


def test_temperature_zero_gives_prior_means(model):
    cfg = model.config
    lr, noise, t = make_inputs(cfg, 1, 2)
    means = []
    hooks = [b.prior.register_forward_hook(lambda m, i, o: means.append(o[:, :cfg.zdim].clone()))
             for b in model.decoder.dec_blocks]
    try:
        _, _, z_cold = capture_states(model, lr, noise, torch.zeros_like(t))
    finally:
        for h in hooks:
            h.remove()
    _, _, z_warm = capture_states(model, lr, noise, torch.full_like(t, 2.0))
    for i in range(len(z_cold)):
        if i < cfg.ky:  # posterior groups ignore t
            assert torch.equal(z_cold[i], z_warm[i])
        else:
            assert torch.equal(z_cold[i], means[i]), f"block {i} is not at its prior mean"
            assert not torch.equal(z_cold[i], z_warm[i])


def test_temperature_is_per_sample(model):
    lr, noise, _ = make_inputs(model.config, 2, 2)
    t = torch.tensor([[0.0, 0.5], [1.0, 1.5]])
    together = run(model, lr, noise, t)
    for b in range(2):
        for k in range(2):
            alone = run(model, lr[b:b + 1], noise[b:b + 1, k:k + 1], t[b:b + 1, k:k + 1])
            assert torch.allclose(alone[0, 0], together[b, k], atol=1e-6, rtol=0)


@pytest.mark.parametrize("batch", [1, 2])
def test_encoder_runs_once_per_image(model, batch):
    lr, noise, t = make_inputs(model.config, batch, 4)
    calls = []
    hook = model.encoder_y.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        together = run(model, lr, noise, t)
    finally:
        hook.remove()
    assert calls == [batch]
    for k in range(4):
        alone = run(model, lr, noise[:, k:k + 1], t[:, k:k + 1])
        assert torch.allclose(alone[:, 0], together[:, k], atol=1e-6, rtol=0)


def test_no_random_number_is_drawn(model):
    inputs = make_inputs(model.config, 1, 2)
    state = torch.random.get_rng_state()
    first = run(model, *inputs)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(12345)
    assert torch.equal(run(model, *inputs), first)


def test_consistency_projection_is_applied_per_sample(model):
    """The projection itself is tested in test_degradation.py; here: its wiring and units."""
    cfg = model.config
    from cvdvae.degradation import bicubic_degradation

    degradation = bicubic_degradation(cfg.image_size, cfg.scale_factor)
    lr, noise, t = make_inputs(cfg, 2, 3)
    plain = run(model, lr, noise, t)
    sr = run(model, lr, noise, t, consistent=True)
    expected = (degradation.project(plain.double() * 255, lr[:, None].double()) / 255).clamp(0, 1)
    assert torch.allclose(sr.double(), expected, atol=1e-5, rtol=0)

    def lr_error(x):
        return (degradation.downscale(x.double() * 255) - lr[:, None]).abs().mean()

    assert lr_error(sr) < 0.5 * lr_error(plain)


@pytest.mark.parametrize("bad,message", [
    (lambda lr, nz, t: (lr, nz[..., :-1], t), "noise must be"),
    (lambda lr, nz, t: (lr[:, :, :4], nz, t), "lr must be"),
    (lambda lr, nz, t: (None, nz, t), "lr must be"),
    (lambda lr, nz, t: (lr, nz, t[0]), "temperature must be"),
])
def test_bad_shapes_are_refused(bad, message):
    model = random_model(preset("tiny-x4"))
    with pytest.raises(ValueError, match=message):
        run(model, *bad(*make_inputs(model.config, 1, 2)))


def test_prior_only_model_samples_without_lr():
    cfg = preset("tiny-x4").replace(enc_blocks_y=None, width_y=None, ky=0, image_size_y=None)
    model = random_model(cfg)
    _, noise, t = make_inputs(preset("tiny-x4"), 2, 3)
    assert run(model, None, noise, t).shape == (2, 3, 3, 32, 32)
