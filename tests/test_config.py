import json

import pytest

from cvdvae.config import PRESETS, CVDVAEConfig, config_from_mapping, encoder_resolutions, load_config, preset
from cvdvae.errors import ConfigError
from cvdvae.layer_string import parse_layer_string, parse_width_string
from conftest import CUSTOM, custom_config


def test_layer_string_grammar():
    assert parse_layer_string("4x2,8m4,16d2,1") == [(4, None), (4, None), (8, 4), (16, 2), (1, None)]
    # The letter is tested in the order x, m, d, as the official parser does.
    assert parse_layer_string("32x1") == [(32, None)]


@pytest.mark.parametrize("bad", ["", "4x", "ax2", "4m0", "4,,8", "4y2"])
def test_layer_string_errors(bad):
    with pytest.raises(ConfigError):
        parse_layer_string(bad)


def test_width_string():
    assert parse_width_string("") == {}
    assert parse_width_string("32:256, 16:512") == {32: 256, 16: 512}
    with pytest.raises(ConfigError, match="resolution:width"):
        parse_width_string("32-256")


def test_ffhq256_defaults_and_block_tables():
    cfg = preset("ffhq256")
    res = [r for r, _ in cfg.decoder_layers]
    assert len(res) == 66 and len(cfg.encoder_layers) == 68
    assert {r: res.count(r) for r in set(res)} == {1: 2, 4: 4, 8: 5, 16: 10, 32: 22, 64: 14, 128: 8, 256: 1}
    assert cfg.bias_resolutions == [1, 4, 8, 16, 32, 64]
    assert cfg.bottleneck(cfg.width) == 128 and not cfg.has_lr_encoder


@pytest.mark.parametrize("name,scale,ky,size_y", [("ffhq256-x4", 4, 57, 64), ("ffhq256-x8", 8, 43, 32),
                                                  ("ffhq256-x16", 16, 21, 16), ("tiny-x4", 4, 5, 8)])
def test_presets(name, scale, ky, size_y):
    cfg = preset(name)
    assert (cfg.scale_factor, cfg.ky, cfg.image_size_y) == (scale, ky, size_y)
    # The natural cut points: every decoder group at a resolution the LR image reaches.
    assert cfg.ky == sum(r <= size_y for r, _ in cfg.decoder_layers)
    assert encoder_resolutions(cfg.encoder_y_layers, size_y)[0] == size_y


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'x5'"):
        preset("x5")


def test_load_yaml_and_json_with_ignored_keys(tmp_path):
    (tmp_path / "c.yaml").write_text("width: 8\nzdim: 3\nlr: 0.0002\ndataset: ffhq_256\n" +
                                     "\n".join(f"{k}: '{v}'" if isinstance(v, str) else f"{k}: {v}"
                                               for k, v in CUSTOM.items() if k not in ("width", "zdim")))
    (tmp_path / "c.json").write_text(json.dumps({**CUSTOM, "n_batch": 4}))
    from_yaml = load_config(tmp_path / "c.yaml")
    from_json, ignored = config_from_mapping(json.loads((tmp_path / "c.json").read_text()))
    assert from_yaml == from_json == custom_config()
    assert ignored == ["n_batch"]
    assert config_from_mapping({"lr": 1, "dataset": "x"})[1] == ["dataset", "lr"]


def test_roundtrip_json():
    cfg = custom_config()
    assert config_from_mapping(json.loads(cfg.to_json()))[0] == cfg


@pytest.mark.parametrize("changes,message", [
    (dict(ky=9), "ky=9 must be between 1"),
    (dict(ky=7), "decoder block 6 at resolution 16 is conditioned"),
    (dict(dec_blocks="1x1,4m2,16x1"), "mixes in resolution 2"),
    (dict(dec_blocks="1x1,4m1,8x1"), "must end at image_size 16"),
    (dict(enc_blocks="16x1,16d3,8x1"), "does not divide"),
    (dict(enc_blocks="16x1,8x1"), "block 1 is at resolution 8"),
    (dict(custom_width_str="8:6,4:12,1:16"), "width shrinks"),
    (dict(custom_width_str_y="1:8"), "width shrinks"),
    (dict(image_size_y=5), "must divide"),
    (dict(width="wide"), "not a valid int"),
    (dict(zdim=2.5), "not a valid int"),
    (dict(image_channels=1), "image_channels must be 3"),
])
def test_validation_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        custom_config(**changes)


def test_lr_fields_need_encoder():
    with pytest.raises(ConfigError, match="need enc_blocks_y"):
        CVDVAEConfig(ky=3)


def test_every_preset_is_valid():
    for name in PRESETS:
        assert isinstance(preset(name), CVDVAEConfig)
