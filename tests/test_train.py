"""cvdvae-train on a tiny model and synthetic faces: objective, learning, frozen prior, resume."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, command
from PIL import Image

from cvdvae.config import preset
from cvdvae.random_weights import random_model
from cvdvae.train.data import split_indices
from cvdvae.train.objective import PosteriorKL, gaussian_kl, trainable_parameters
from cvdvae.weights import read_weight_file
from runtime.cli.train import main as train_main


def test_kl_of_identical_gaussians_is_zero():
    mu, logsigma = torch.randn(5, 3), torch.randn(5, 3)
    assert torch.allclose(gaussian_kl(mu, logsigma, mu, logsigma), torch.zeros(5, 3), atol=1e-6)


def test_kl_matches_the_closed_form():
    gen = torch.Generator().manual_seed(0)
    mu1, mu2, s1, s2 = (torch.randn(1000, generator=gen, dtype=torch.float64) for _ in range(4))
    oracle = torch.distributions.kl_divergence(torch.distributions.Normal(mu1, s1.exp()),
                                               torch.distributions.Normal(mu2, s2.exp()))
    assert torch.allclose(gaussian_kl(mu1, s1, mu2, s2), oracle, rtol=1e-10, atol=1e-12)


def test_objective_averages_per_group_and_sums_groups():
    model = random_model(preset("tiny-x4"), with_posterior=True)
    hr = torch.rand(3, 3, 32, 32) * 255
    lr = torch.rand(3, 3, 8, 8) * 255
    per_group = PosteriorKL(model)(hr, lr, generator=torch.Generator().manual_seed(0))
    assert per_group.shape == (model.config.ky, 3) and (per_group >= -1e-6).all()
    assert torch.isclose(PosteriorKL.loss(per_group), per_group.sum(0).mean())
    # Gradients reach only the LR encoder.
    PosteriorKL.loss(per_group).backward()
    trainable = {n for n, _ in trainable_parameters(model)}
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name


def test_official_split():
    train, val = split_indices(70_000)
    np.random.seed(5)
    order = np.random.permutation(70_000)  # the VD-VAE code's own calls
    assert len(val) == 7000 and np.array_equal(val, order[-7000:]) and np.array_equal(train, order[:-7000])
    assert [len(x) for x in split_indices(40)] == [36, 4]


def faces(folder, count=40, size=32, seed=0):
    """Smooth synthetic 'faces': an ellipse of random colour on a random background."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    for i in range(count):
        a, b = rng.uniform(0.5, 0.9, 2)
        inside = (xx / a) ** 2 + (yy / b) ** 2 < 1
        img = np.where(inside[..., None], rng.uniform(120, 240, 3), rng.uniform(0, 120, 3))
        img = img + 20 * np.sin(3 * xx + rng.uniform(0, 6))[..., None]
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"face{i:03d}.png")
    return folder


def train(*args):
    return train_main([*map(str, args), "--quiet"])


COMMON = ("--preset", "tiny-x4", "--random-prior", "--batch-size", "4", "--workers", "0", "--log-every", "5",
          "--device", "cpu", "--lr", "3e-3")


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data = faces(root / "faces")
    assert train("--data", data, "--out", root / "run", "--steps", "50", "--val-every", "25", *COMMON) == 0
    return root, data


def test_training_lowers_the_validation_kl(trained):
    root, _ = trained
    vals = [m for m in metrics(root / "run") if "val_kl" in m]
    assert [m["step"] for m in vals] == [0, 25, 50]
    assert vals[-1]["val_kl"] < 0.7 * vals[0]["val_kl"], vals
    assert all(np.isfinite(m["val_lr_psnr"]) for m in vals)
    steps = [m for m in metrics(root / "run") if "loss" in m]
    assert steps[-1]["step"] == 50 and {"kl_per_res", "lr", "samples_per_s", "grad_norm"} <= steps[-1].keys()


def test_frozen_weights_are_bit_identical(trained):
    root, _ = trained
    after = read_weight_file(root / "run" / "last.safetensors").tensors
    start = random_model(preset("tiny-x4"), seed=0, with_posterior=True).state_dict()  # --random-prior, seed 0
    changed = {k for k in after if not torch.equal(after[k], start[k])}
    assert changed and all(k.startswith("encoder_y.") or ".enc_y." in k for k in changed)
    assert all(torch.equal(after[k], start[k]) for k in start if not (k.startswith("encoder_y.") or ".enc_y." in k))


def test_resume_continues_the_same_run(trained, tmp_path):
    _, data = trained
    assert train("--data", data, "--out", tmp_path / "a", "--steps", "20", "--val-every", "100", *COMMON) == 0
    assert train("--resume", tmp_path / "a", "--steps", "30", "--quiet") == 0
    assert train("--data", data, "--out", tmp_path / "b", "--steps", "30", "--val-every", "100", *COMMON) == 0
    a = read_weight_file(tmp_path / "a" / "last.safetensors").tensors
    b = read_weight_file(tmp_path / "b" / "last.safetensors").tensors
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert [m["step"] for m in metrics(tmp_path / "a") if "loss" in m] == [5, 10, 15, 20, 25, 30]


def test_interrupt_saves_a_resumable_checkpoint(trained, tmp_path, monkeypatch):
    _, data = trained
    from cvdvae.train import loop

    original = loop.Trainer.train_step

    def interrupt_at_7(self, hr, lr):
        if self.state.step == 7:
            raise KeyboardInterrupt
        return original(self, hr, lr)

    monkeypatch.setattr(loop.Trainer, "train_step", interrupt_at_7)
    assert train("--data", data, "--out", tmp_path / "r", "--steps", "20", *COMMON) == 130
    state = torch.load(tmp_path / "r" / "state.pt", weights_only=True)
    assert json.loads(state["state"])["step"] == 7
    monkeypatch.setattr(loop.Trainer, "train_step", original)
    assert train("--resume", tmp_path / "r") == 0
    assert max(m["step"] for m in metrics(tmp_path / "r")) == 20


def test_refusals(trained, tmp_path):
    root, data = trained
    run = lambda *a: command(train_main, *a, env={"CVDVAE_HOME": str(tmp_path / "home")})  # no fetched prior there
    r = run("--data", data, "--out", root / "run", *COMMON)
    assert r.returncode == 2 and "exists; a new run needs a new folder" in r.stderr
    r = run("--data", data, "--out", tmp_path / "x", "--preset", "tiny-x4")
    assert r.returncode == 2 and "no prior weights: run `cvdvae fetch vdvae-ffhq256`" in r.stderr
    assert not (tmp_path / "x").exists()
    r = run("--data", tmp_path / "nope", "--out", tmp_path / "y", *COMMON)
    assert r.returncode == 2 and "Invalid value for '--data'" in r.stderr


def test_trained_checkpoint_exports_and_samples(trained, tmp_path):
    root, _ = trained
    from runtime.cli.export import main as export_main
    from runtime.cli.run import main as run_main

    assert export_main(["--checkpoint", str(root / "run" / "best.safetensors"), "--out", str(tmp_path / "e"),
                        "--onnx-only", "--quiet"]) == 0
    Image.open(next((root / "faces").iterdir())).resize((8, 8)).save(tmp_path / "lr.png")
    assert run_main([str(tmp_path / "e"), "--input", str(tmp_path / "lr.png"), "--n", "2", "--out",
                     str(tmp_path / "o"), "--quiet"]) == 0
    assert len(list((tmp_path / "o").glob("lr_s0_*.png"))) == 3


def test_data_parallel_with_torchrun(trained, tmp_path):
    """Two CPU processes (gloo) train the same run; rank 0 writes it."""
    _, data = trained
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "runtime.cli.train", "--data", str(data), "--out", str(tmp_path / "ddp"), "--steps", "6",
                        "--val-every", "6", *COMMON], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    logged = metrics(tmp_path / "ddp")
    assert max(m["step"] for m in logged) == 6
    assert (tmp_path / "ddp" / "best.safetensors").is_file()
