import math
import pickle
import re
import subprocess
import sys

import pytest
import torch

from cvdvae.config import preset
from cvdvae.errors import WeightsError
from cvdvae.model import CVDVAE
from cvdvae.random_weights import random_model
from cvdvae.weights import expected_shapes, load_model, read_weight_file, resolve_weights, save_safetensors
from conftest import FIXTURES, custom_config

VDVAE_PREFIXES = ("encoder.", "decoder.")


def official_state(cfg, seed=0):
    """A full model's tensors under official names, as the reference code would save them."""
    return random_model(cfg, seed, with_posterior=True).state_dict()


def write_th(path, state, module_prefix=False):
    vdvae = {k: v for k, v in state.items() if k.startswith(VDVAE_PREFIXES) and "enc_y" not in k}
    torch.save({("module." if module_prefix else "") + k: v for k, v in vdvae.items()}, path)


def write_ckpt(path, state, cfg):
    hparams = dict(enc_blocks_y=cfg.enc_blocks_y, ky=cfg.ky, image_size_y=cfg.image_size_y,
                   vdvae_conf_path="configs/x.yaml", lr=1e-4, min_lr=1e-6, patience=5)
    torch.save({"state_dict": {f"cvae.{k}": v for k, v in state.items()}, "hyper_parameters": hparams,
                "epoch": 1, "global_step": 10, "pytorch-lightning_version": "2.1.0"}, path)


def test_ffhq256_has_the_official_key_set():
    shapes = expected_shapes(preset("ffhq256"))
    vdvae = {k: s for k, s in shapes.items() if k.startswith(VDVAE_PREFIXES)}
    assert len(vdvae) == 2272
    assert sum(math.prod(s) for s in vdvae.values()) == 114_874_852
    assert sum(k.startswith("encoder.") for k in vdvae) == 546
    assert vdvae["decoder.dec_blocks.0.prior.c2.weight"] == (128, 128, 1, 1)
    assert vdvae["decoder.dec_blocks.65.prior.c4.weight"] == (544, 128, 1, 1)
    assert vdvae["decoder.bias_xs.5"] == (1, 512, 64, 64)
    assert vdvae["decoder.out_net.out_conv.weight"] == (100, 512, 1, 1)
    assert set(shapes) - set(vdvae) == {"shift", "scale"}


def test_x8_key_set_equals_the_independent_calculator(tmp_path):
    """tests/fixtures/cvdvae_compute.py derives the keys from the layer strings alone."""
    tool = FIXTURES / "cvdvae_compute.py"
    out = tmp_path / "keys.tsv"
    subprocess.run([sys.executable, str(tool), "--keys", str(out)], check=True, capture_output=True)
    rows = [line.split("\t") for line in out.read_text().splitlines() if not line.startswith("#")]
    theirs = {k.removeprefix("cvae."): tuple(int(x) for x in re.findall(r"\d+", s)) for k, s in rows}
    assert len(theirs) == 2956
    assert expected_shapes(preset("ffhq256-x8")) == theirs


def test_inference_model_leaves_out_training_parts():
    cfg = preset("ffhq256-x8")
    with torch.device("meta"):
        inference = CVDVAE(cfg).state_dict()
    full = expected_shapes(cfg)
    dropped = set(full) - set(inference)
    assert dropped and all(k.startswith("encoder.") or ".enc." in k for k in dropped)
    assert set(inference) <= set(full)
    n_params = sum(math.prod(s) for k, s in full.items() if k in inference and k not in ("shift", "scale"))
    assert n_params == 58_992_804 + 16_894_720 + 17_987_040  # architecture.md 2.7 and 7.2


def assert_same(model, state):
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("module_prefix", [False, True])
def test_th_roundtrip(tmp_path, module_prefix):
    cfg = preset("tiny-x4").replace(enc_blocks_y=None, width_y=None, ky=0, image_size_y=None)
    state = official_state(cfg)
    write_th(tmp_path / "m.th", state, module_prefix)
    model = load_model(tmp_path / "m.th", config=cfg, with_posterior=True)
    assert_same(model, state)


def test_ckpt_roundtrip_takes_config_from_the_checkpoint(tmp_path):
    cfg = custom_config()
    state = official_state(cfg)
    state["shift"] = torch.full((1, 1, 1), -100.0)
    write_ckpt(tmp_path / "m.ckpt", state, cfg)
    # The config file lacks what the ckpt carries (hyper_parameters, tensor shapes, buffers).
    carried = ("enc_blocks_y", "ky", "image_size_y", "width_y", "shift")
    base = {k: v for k, v in cfg.to_dict().items() if k not in carried}
    (tmp_path / "vdvae.yaml").write_text("\n".join(f"{k}: {v!r}" for k, v in base.items()))
    resolved = resolve_weights(tmp_path / "m.ckpt", config=tmp_path / "vdvae.yaml")
    assert resolved.config == cfg.replace(shift=-100.0)
    model = load_model(tmp_path / "m.ckpt", config=tmp_path / "vdvae.yaml", with_posterior=True)
    assert_same(model, state)


def test_safetensors_roundtrip_carries_the_config(tmp_path):
    cfg = custom_config()
    state = official_state(cfg, seed=3)
    save_safetensors(tmp_path / "m.safetensors", state, cfg)
    assert read_weight_file(tmp_path / "m.safetensors").config_values == cfg.to_dict()
    assert_same(load_model(tmp_path / "m.safetensors", with_posterior=True), state)
    inference = load_model(tmp_path / "m.safetensors")
    assert not hasattr(inference, "encoder") and not hasattr(inference.decoder.dec_blocks[0], "enc")
    assert_same(inference, state)


def test_vdvae_plus_checkpoint_merge(tmp_path):
    cfg = custom_config()
    state = official_state(cfg)
    write_th(tmp_path / "prior.th", state)
    lr_only = {k: v for k, v in state.items() if k.startswith("encoder_y.") or ".enc_y." in k}
    save_safetensors(tmp_path / "lr.safetensors", lr_only, cfg)
    assert_same(load_model(tmp_path / "lr.safetensors", vdvae=tmp_path / "prior.th"), state)


def test_official_fixture_loads_strictly(official_case):
    ckpt, yaml_path, _ = official_case
    resolved = resolve_weights(ckpt, config=yaml_path)
    assert resolved.config.ky == 4 and resolved.config.num_mixtures == 2
    assert len(resolved.tensors) == 435


@pytest.fixture
def saved(tmp_path):
    cfg = custom_config()
    return tmp_path, cfg, official_state(cfg)


def test_missing_tensor_is_named(saved):
    tmp_path, cfg, state = saved
    del state["decoder.dec_blocks.3.enc_y.c2.bias"]
    save_safetensors(tmp_path / "m.safetensors", state, cfg)
    with pytest.raises(WeightsError, match=r"1 missing \(decoder\.dec_blocks\.3\.enc_y\.c2\.bias\)"):
        load_model(tmp_path / "m.safetensors")


def test_unexpected_tensors_are_counted(saved):
    tmp_path, cfg, state = saved
    for i in range(7):
        state[f"decoder.extra.{i}"] = torch.zeros(1)
    save_safetensors(tmp_path / "m.safetensors", state, cfg)
    with pytest.raises(WeightsError, match=r"7 unexpected \(decoder\.extra\.0, .*decoder\.extra\.4, \.\.\.\)"):
        load_model(tmp_path / "m.safetensors")


def test_misshaped_tensor_is_named(saved):
    tmp_path, cfg, state = saved
    state["decoder.gain"] = torch.ones(1, 9, 1, 1)
    save_safetensors(tmp_path / "m.safetensors", state, cfg)
    with pytest.raises(WeightsError, match=r"mis-shaped \(decoder\.gain: file \[1, 9, 1, 1\] vs model \[1, 8, 1, 1\]\)"):
        load_model(tmp_path / "m.safetensors")


def test_config_that_does_not_match_the_tensors(saved):
    tmp_path, cfg, state = saved
    save_safetensors(tmp_path / "m.safetensors", state, cfg)
    with pytest.raises(WeightsError, match="does not match the model config"):
        load_model(tmp_path / "m.safetensors", config=preset("tiny-x4"))


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_object_is_refused(tmp_path, capsys):
    with open(tmp_path / "evil.th", "wb") as f:
        pickle.dump({"decoder.gain": Payload()}, f)
    with pytest.raises(WeightsError, match="refused, it needs unpickling of objects other than tensors"):
        read_weight_file(tmp_path / "evil.th")
    assert "must never run" not in capsys.readouterr().out


def test_non_tensor_entries_are_refused(tmp_path):
    torch.save({"decoder.gain": [1, 2, 3]}, tmp_path / "m.pt")
    with pytest.raises(WeightsError, match="1 entries that are not tensors"):
        read_weight_file(tmp_path / "m.pt")


@pytest.mark.parametrize("name,content,message", [
    ("m.bin", b"x", "unknown weight format '.bin'"),
    ("m.th", b"not a zip", "not a readable PyTorch file"),
    ("m.safetensors", b"\x00" * 16, "not a readable safetensors file"),
])
def test_unreadable_files(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(WeightsError, match=message):
        read_weight_file(tmp_path / name)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="weight file not found"):
        read_weight_file(tmp_path / "nope.ckpt")


def test_ckpt_without_cvae_prefix_is_refused(tmp_path):
    torch.save({"state_dict": {"decoder.gain": torch.ones(1)}}, tmp_path / "m.ckpt")
    with pytest.raises(WeightsError, match="must start with 'cvae.'"):
        read_weight_file(tmp_path / "m.ckpt")


class Custom:
    pass


def test_torch_saved_custom_object_is_refused_with_its_name(tmp_path):
    torch.save({"decoder.gain": Custom()}, tmp_path / "m.pt")
    with pytest.raises(WeightsError, match="refused.*Custom"):
        read_weight_file(tmp_path / "m.pt")


def test_random_weights_do_not_depend_on_the_training_parts():
    cfg = custom_config()
    inference, full = random_model(cfg, seed=4).state_dict(), random_model(cfg, seed=4, with_posterior=True).state_dict()
    assert all(torch.equal(v, full[k]) for k, v in inference.items())
    assert not torch.equal(random_model(cfg, seed=5).state_dict()["decoder.gain"], inference["decoder.gain"])
