"""The compute count against the independent calculator's published figures (architecture.md 7)."""

import pytest
import torch

from cvdvae.config import preset
from cvdvae.flops import sampling_work
from cvdvae.random_weights import random_model
from conftest import make_inputs


def test_ffhq256_decoder_macs():
    work = sampling_work(preset("ffhq256"))
    assert work.encoder_y_macs == 0
    assert work.decoder_macs / 1e9 == pytest.approx(244.85, abs=0.01)


@pytest.mark.parametrize("name,encoder_gmac,total_gmac", [
    ("ffhq256-x4", 31.67, 312.1), ("ffhq256-x8", 8.94, 264.8), ("ffhq256-x16", 1.08, 247.2)])
def test_conditional_macs(name, encoder_gmac, total_gmac):
    work = sampling_work(preset(name))
    assert work.encoder_y_macs / 1e9 == pytest.approx(encoder_gmac, abs=0.01)
    assert (work.encoder_y_macs + work.decoder_macs) / 1e9 == pytest.approx(total_gmac, abs=0.1)
    # The LR encoder runs once per image: 8 samples cost less than 8 single-sample passes.
    assert work.flops(1, 8) == 2 * (work.encoder_y_macs + 8 * work.decoder_macs)


def test_count_matches_the_convolutions_the_model_runs():
    """Hooks on every Conv2d of a small model give the same multiply-adds."""
    model = random_model(preset("tiny-x4"))
    lr, noise, t = make_inputs(model.config, 2, 3)
    total = 0

    def count(module, inputs, output):
        nonlocal total
        w = module.weight
        total += output.numel() * w.shape[1] * w.shape[2] * w.shape[3]

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode():
        model(lr, noise, t)
    for h in hooks:
        h.remove()
    assert total == sampling_work(model.config).flops(2, 3) // 2
