"""The command lines: exit codes, one-line errors, nothing overwritten or left half-written."""

import subprocess
import sys

import pytest
import torch
from conftest import REPO, custom_config
from test_weights import official_state, write_ckpt, write_th

from cvdvae.weights import load_model, read_weight_file
from runtime.cli.convert import main as convert_main
from runtime.cli.demo import main as demo_main


def test_convert_ckpt_to_safetensors(tmp_path, capsys):
    cfg = custom_config()
    state = official_state(cfg)
    write_ckpt(tmp_path / "m.ckpt", state, cfg)
    (tmp_path / "c.json").write_text(cfg.to_json())
    out = tmp_path / "m.safetensors"
    assert convert_main(["--checkpoint", str(tmp_path / "m.ckpt"), "--config", str(tmp_path / "c.json"),
                         "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    converted = read_weight_file(out)
    assert converted.config_values == cfg.to_dict()
    assert converted.tensors.keys() == state.keys()
    assert all(torch.equal(converted.tensors[k], v) for k, v in state.items())
    # Our file loads on its own: the config travels inside it.
    assert load_model(out).config == cfg


def test_convert_official_fixture(official_case, tmp_path):
    ckpt, yaml_path, _ = official_case
    out = tmp_path / "public.safetensors"
    assert convert_main(["--checkpoint", str(ckpt), "--config", str(yaml_path), "--out", str(out)]) == 0
    assert load_model(out).config.ky == 4


def test_convert_vdvae_prior_only(tmp_path):
    cfg = custom_config().replace(enc_blocks_y=None, width_y=None, ky=0, image_size_y=None,
                                  custom_width_str_y="")
    write_th(tmp_path / "prior.th", official_state(cfg))
    (tmp_path / "c.json").write_text(cfg.to_json())
    out = tmp_path / "prior.safetensors"
    assert convert_main(["--checkpoint", str(tmp_path / "prior.th"), "--config", str(tmp_path / "c.json"),
                         "--out", str(out)]) == 0
    assert load_model(out).config == cfg


def run_convert(*args):
    return subprocess.run([sys.executable, "-m", "runtime.cli.convert", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO)


def test_convert_refuses_to_overwrite(tmp_path):
    cfg = custom_config()
    write_ckpt(tmp_path / "m.ckpt", official_state(cfg), cfg)
    (tmp_path / "c.json").write_text(cfg.to_json())
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"precious")
    r = run_convert("--checkpoint", tmp_path / "m.ckpt", "--config", tmp_path / "c.json", "--out", out)
    assert r.returncode == 2 and "exists; pass --overwrite" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert out.read_bytes() == b"precious"
    r = run_convert("--checkpoint", tmp_path / "m.ckpt", "--config", tmp_path / "c.json", "--out", out,
                    "--overwrite")
    assert r.returncode == 0, r.stderr
    assert load_model(out).config == cfg


@pytest.mark.parametrize("problem", ["mismatch", "missing", "suffix"])
def test_convert_bad_input_is_one_line_exit_2_and_no_file(tmp_path, problem):
    cfg = custom_config()
    write_ckpt(tmp_path / "m.ckpt", official_state(cfg), cfg)
    checkpoint, out = tmp_path / "m.ckpt", tmp_path / "m.safetensors"
    extra = ["--config", tmp_path / "c.json"]
    (tmp_path / "c.json").write_text(cfg.to_json())
    if problem == "mismatch":
        extra = ["--preset", "tiny-x4"]  # the checkpoint's tensors do not fit this config
    elif problem == "missing":
        checkpoint = tmp_path / "nope.ckpt"
    else:
        out = tmp_path / "m.bin"
    r = run_convert("--checkpoint", checkpoint, *extra, "--out", out)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("cvdvae-convert: error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "m.ckpt"]


def test_debug_shows_the_traceback(tmp_path):
    r = run_convert("--checkpoint", tmp_path / "nope.ckpt", "--out", tmp_path / "x.safetensors", "--debug")
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_demo_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "demo"
    assert demo_main(["--out", str(out), "--n", "3"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["engine", "face.png", "face_s0_00.png", "face_s0_01.png", "face_s0_02.png", "face_s0_grid.png",
                     "face_s0_mean.png", "face_s0_std.png"]
    # cache/: what the run compiled, for the next start (runtime.compiled_cache)
    assert sorted(p.name for p in (out / "engine").iterdir()) == ["cache", "meta.json", "model.onnx", "reference.npz"]
    from PIL import Image

    first = (out / "face_s0_01.png").read_bytes()
    # LR | HR | 3 samples | mean | std map, the map 14 px taller by its scale bar
    assert Image.open(out / "face_s0_grid.png").size == (7 * 32 + 6 * 4, 32 + 14)
    assert demo_main(["--out", str(out), "--n", "3"]) == 0  # runs again, same pixels
    assert (out / "face_s0_01.png").read_bytes() == first
