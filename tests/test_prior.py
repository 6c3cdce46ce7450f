"""Faces from the public prior alone: fetch -> export --prior -> run, on a small prior-only model in
the official VD-VAE format (docs/contract/graph.md, the unconditional graph: inputs noise and temperature, no lr)."""

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from conftest import io_signature
from test_fetch import tiny_prior
from test_weights import official_state, write_th

from cvdvae.hub import assets
from cvdvae.seeding import noise_torch
from cvdvae.weights import load_model
from runtime.cli import fetch as fetch_command
from runtime.cli.app import main as cvdvae


@pytest.fixture(scope="module")
def prior_home(tmp_path_factory):
    """$CVDVAE_HOME after `cvdvae fetch vdvae-ffhq256` from a local mirror of a tiny prior."""
    root = tmp_path_factory.mktemp("prior")
    write_th(root / "mirror.th", official_state(tiny_prior()))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CVDVAE_HOME", str(root / "home"))
        asset = assets.ASSETS["vdvae-ffhq256"]
        mp.setitem(assets.ASSETS, "vdvae-ffhq256", dataclasses.replace(asset, config=tiny_prior()))
        assert cvdvae(["fetch", "vdvae-ffhq256", "--url", str(root / "mirror.th"), "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def exported(prior_home):
    out = prior_home / "engine"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CVDVAE_HOME", str(prior_home / "home"))
        assert cvdvae(["export", "--prior", "--out", str(out), "--quiet"]) == 0
    return out


def test_the_prior_graph_is_the_unconditional_contract(exported):
    meta = json.loads((exported / "meta.json").read_text())
    proto = onnx.load(str(exported / "model.onnx"))
    big, dim = meta["hr_size"], meta["noise_dim"]
    assert io_signature(proto) == {"noise": ("FLOAT", ["B", "n", dim]), "temperature": ("FLOAT", ["B", "n"]),
                                   "sr": ("FLOAT", ["B", "n", 3, big, big]), "non_finite": ("FLOAT", ["B", "n"])}
    assert meta["conditional"] is False and meta["lr_size"] is None and "lr" not in meta["inputs"]
    assert meta["validation"]["passed"] and all(s["max_abs_error"] <= 1e-4 for s in meta["validation"]["shapes"])
    assert str(exported.parent / "home" / "vdvae-ffhq256.safetensors") in meta["source"]


def test_run_draws_faces_from_noise_alone_and_matches_pytorch(exported, prior_home, tmp_path):
    assert cvdvae(["run", str(exported), "--n", "4", "--seed", "3", "-t", "0.8,0,1.2,0.5", "--out",
                   str(tmp_path / "o"), "--quiet"]) == 0
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert names == ["sample_s3_00.png", "sample_s3_01.png", "sample_s3_02.png", "sample_s3_03.png",
                     "sample_s3_grid.png"]
    got = np.stack([np.asarray(Image.open(tmp_path / "o" / f"sample_s3_{k:02d}.png")) for k in range(4)])
    model = load_model(prior_home / "home" / "vdvae-ffhq256.safetensors")
    noise = noise_torch(3, 4, model.noise_layout.dim)[None]
    with torch.inference_mode():
        want = model(None, noise, torch.tensor([[0.8, 0.0, 1.2, 0.5]]))[0].numpy()
    want = np.round(np.clip(want, 0, 1) * 255).transpose(0, 2, 3, 1)
    assert np.abs(got.astype(int) - want).max() <= 1 and np.mean(got != want) < 1e-3
    assert np.abs(got[0].astype(int) - got[2]).mean() > 3  # different noise and temperature, different faces
    assert cvdvae(["run", str(exported), "--n", "2", "--seed", "3", "-t", "0.8,0", "--out", str(tmp_path / "p"),
                   "--quiet", "--no-grid"]) == 0
    for k in range(2):
        assert (tmp_path / "p" / f"sample_s3_{k:02d}.png").read_bytes() == \
            (tmp_path / "o" / f"sample_s3_{k:02d}.png").read_bytes()


def test_a_prior_takes_no_input_and_a_missing_prior_names_the_fetch(exported, tmp_path, monkeypatch, capsys):
    (tmp_path / "a.png").write_bytes(b"")
    assert cvdvae(["run", str(exported), "--input", str(tmp_path / "a.png")]) == 2
    assert "'--input'" in capsys.readouterr().err
    monkeypatch.setenv("CVDVAE_HOME", str(tmp_path / "empty"))
    assert cvdvae(["export", "--prior", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "`cvdvae fetch vdvae-ffhq256`" in err and not (tmp_path / "x").exists()


def test_a_prior_checkpoint_exported_without_asking_for_the_prior_is_recognised(prior_home, tmp_path, capsys):
    """An openai-style .th (with its config) or our converted safetensors, named as a checkpoint at the
    default scale: no LR encoder is in it, so the unconditional graph is exported and said (the x4
    preset's LR sizes are not forced onto it)."""
    (tmp_path / "prior.json").write_text(tiny_prior().to_json())
    for name, args in (("th", ["--checkpoint", str(prior_home / "mirror.th"), "--config", str(tmp_path / "prior.json")]),
                       ("safetensors", ["--checkpoint", str(prior_home / "home" / "vdvae-ffhq256.safetensors")])):
        out = tmp_path / name
        assert cvdvae(["export", *args, "--out", str(out), "--onnx-only", "--no-validate", "--quiet"]) == 0
        err = capsys.readouterr().err
        assert "holds a VD-VAE prior alone (no LR encoder): exported as the unconditional graph" in err
        meta = json.loads((out / "meta.json").read_text())
        assert meta["conditional"] is False and meta["config"] == tiny_prior().to_dict()
        assert "lr" not in io_signature(onnx.load(str(out / "model.onnx")))
