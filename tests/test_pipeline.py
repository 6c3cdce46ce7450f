"""``cvdvae.Pipeline``: the library every command stands on. Its samples are the files ``cvdvae run``
writes, its samples are the model's own (PyTorch, from the contract's noise), its errors name
settings and no flag, it runs without PyTorch for a graph, and every backend fills in the
whole ``Backend`` interface."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, nan_model
from PIL import Image

from cvdvae.errors import CVDVAEError
from cvdvae.random_weights import demo_model
from cvdvae.seeding import noise_torch
from runtime.cli.run import main as run_main


def face(seed: int = 0, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def demo_weights(path):
    """The demo model's weights as a file (with the HR encoder a weight file holds)."""
    from cvdvae.config import preset
    from cvdvae.random_weights import DEMO_PRESET, random_model
    from cvdvae.weights import save_safetensors

    cfg = preset(DEMO_PRESET)
    save_safetensors(path, random_model(cfg, 0, with_posterior=True).state_dict(), cfg)
    return path


@pytest.fixture(scope="module")
def pipe(demo_export):
    from cvdvae import Pipeline

    return Pipeline.from_pretrained(demo_export)


def test_the_samples_are_the_models_own_from_the_contracts_noise(pipe):
    """PyTorch's demo model on ``noise_torch`` (the oracle: the model itself), rounded as the
    official sampler saves: the pipeline's 8-bit samples, to one level where float rounding differs."""
    images = [face(1), face(2)]
    out = pipe(images, n=3, seed=7, temperature=[0.8, 0.0, 1.2])
    assert out.samples.shape == (2, 3, 32, 32, 3) and out.samples.dtype == np.uint8
    model = demo_model()
    lr = torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).astype(np.float32))
    noise = noise_torch(7, 3, model.noise_layout.dim)[None].expand(2, -1, -1)
    with torch.inference_mode():
        want = model(lr, noise, torch.tensor([[0.8, 0.0, 1.2]] * 2)).numpy()
    want = np.round(np.clip(want, 0, 1) * 255).transpose(0, 1, 3, 4, 2)
    assert np.abs(out.samples.astype(int) - want).max() <= 1 and np.mean(out.samples != want) < 1e-3
    assert out.seed == 7 and out.temperatures.tolist() == pytest.approx([0.8, 0.0, 1.2])
    assert len(out.images) == 2 and len(out.images[0]) == 3 and out.images[1][2].size == (32, 32)
    np.testing.assert_array_equal(np.asarray(out.images[1][2]), out.samples[1, 2])


def test_every_input_kind_gives_the_bytes_cvdvae_run_writes(pipe, demo_export, tmp_path):
    """A path, PNG bytes, a PIL image and an array of one face: the pixels of run's PNGs; n = 2 is
    the first two of n = 4 (docs/contract/noise-and-seeds.md); from_hr degrades an HR image as run --from-hr does."""
    Image.fromarray(face(3)).save(tmp_path / "f.png")
    Image.fromarray(face(4, 32)).save(tmp_path / "hr.png")
    assert run_main([str(demo_export), "--input", str(tmp_path / "f.png"), "--n", "4", "--seed", "2", "--out",
                     str(tmp_path / "o"), "--quiet"]) == 0
    assert run_main([str(demo_export), "--input", str(tmp_path / "hr.png"), "--from-hr", "--n", "2", "--seed", "2",
                     "--out", str(tmp_path / "o"), "--quiet"]) == 0
    written = np.stack([np.asarray(Image.open(tmp_path / "o" / f"f_s2_{k:02d}.png")) for k in range(4)])
    for source in (tmp_path / "f.png", str(tmp_path / "f.png"), (tmp_path / "f.png").read_bytes(),
                   Image.open(tmp_path / "f.png"), face(3)):
        np.testing.assert_array_equal(pipe(source, n=4, seed=2).samples[0], written)
    np.testing.assert_array_equal(pipe(face(3), n=2, seed=2).samples[0], written[:2])
    from_hr = pipe(tmp_path / "hr.png", n=2, seed=2, from_hr=True)
    for k in range(2):
        np.testing.assert_array_equal(from_hr.samples[0, k], np.asarray(Image.open(tmp_path / "o" / f"hr_s2_{k:02d}.png")))
    np.testing.assert_array_equal(from_hr.grid(0), np.asarray(Image.open(tmp_path / "o" / "hr_s2_grid.png")))


def test_errors_name_settings_and_never_a_flag(pipe):
    cases = [(lambda: pipe(face(0, 32)), "from_hr=True"),            # an HR image
             (lambda: pipe(face(0, 64)), "Pipeline.faces()"),         # a photo
             (lambda: pipe(face(0), n=0), "n must be"),
             (lambda: pipe(face(0), temperature=1e39), "from 0 to 10"),
             (lambda: pipe(face(0), temperature=10.5), "from 0 to 10"),
             (lambda: pipe(face(0), temperature=True), "a number"),
             (lambda: pipe(face(0), n=2, temperature=[0.1, 0.2, 0.3]), "3 temperatures for n = 2"),
             (lambda: pipe(face(0), seed=-1), "seed must be"),
             (lambda: pipe(None), "pass one or a list"),
             (lambda: pipe(b"not an image"), "not a readable image")]
    for call, expected in cases:
        with pytest.raises(CVDVAEError) as err:
            call()
        assert expected in str(err.value) and "--" not in str(err.value) and "\n" not in str(err.value)


def test_a_broken_model_raises_or_keeps_the_finite_samples(tmp_path):
    """The crafted graph: t >= 1 gives NaN/Inf (t = 1: -Inf, t > 1: NaN). The error says how many and
    which; with ``keep_non_finite`` the output keeps the finite samples and marks the others as zeros."""
    from cvdvae import NonFiniteSamples, Pipeline

    broken = Pipeline.from_pretrained(nan_model(tmp_path / "nan"))
    temperatures = [0.5, 1.0, 1.5, 0.2]
    with pytest.raises(NonFiniteSamples, match="2 of 4 samples contain NaN/Inf") as err:
        broken(face(0, 2), n=4, temperature=temperatures)
    assert err.value.broken == [[1, 2]] and err.value.count == 2 and err.value.values == 2 * 3 * 4 * 4
    output = broken(face(0, 2), n=4, temperature=temperatures, keep_non_finite=True)
    assert output.non_finite == [[1, 2]] and not output.samples[0, 1:3].any()
    assert output.samples[0, 0].any() and output.samples[0, 3].any()


def test_a_prior_only_model_draws_from_noise_alone(tmp_path):
    from test_fetch import tiny_prior

    from cvdvae import Pipeline
    from cvdvae.weights import save_safetensors
    from export.exporter import ExportSpec, export_folder
    from export.model_source import ModelChoice

    cfg = tiny_prior()
    from cvdvae.random_weights import random_model

    save_safetensors(tmp_path / "prior.safetensors", random_model(cfg, seed=0, with_posterior=True).state_dict(), cfg)
    folder = export_folder(ExportSpec(ModelChoice(prior=True, checkpoint=tmp_path / "prior.safetensors"),
                                      validate=False, out=tmp_path / "prior", engine=False),
                           log=lambda m: None, warn=lambda m: None).folder
    prior = Pipeline.from_pretrained(folder)
    out = prior(None, n=4, seed=1)
    assert out.samples.shape == (1, 4, cfg.image_size, cfg.image_size, 3)
    np.testing.assert_array_equal(prior(None, n=2, seed=1).samples[0], out.samples[0, :2])
    with pytest.raises(CVDVAEError, match="prior-only model"):
        prior(face(0))


def test_from_cvdvae_import_pipeline_needs_no_pytorch_for_a_graph(demo_export, tmp_path):
    script = f"""
import sys, numpy as np
class NoTorch:
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, NoTorch())
from cvdvae import Pipeline
pipe = Pipeline.from_pretrained({str(demo_export)!r})
out = pipe(np.zeros((8, 8, 3), np.uint8), n=2, seed=0)
assert out.samples.shape == (1, 2, 32, 32, 3)
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_every_backend_fills_in_the_whole_interface(demo_export, tmp_path):
    """Each engine the CPU has, and PyTorch on weights: every member ``Backend`` declares is there."""
    from cvdvae import Pipeline
    from runtime.backends.interface import Backend

    members = {name for name in Backend.__annotations__} | {"sample", "sample_rows"}
    demo_weights(tmp_path / "demo.safetensors")
    engines = [Pipeline.from_pretrained(demo_export, name).backend for name in ("onnxruntime", "openvino")]
    engines.append(Pipeline.from_pretrained(tmp_path / "demo.safetensors").backend)
    for engine in engines:
        missing = [name for name in members if not hasattr(engine, name)]
        assert missing == [], f"{engine.name} lacks {missing}"
        assert isinstance(engine.rows_independent, bool) and engine.max_batch >= 1 and engine.max_n >= 1


def test_weights_run_through_pytorch_give_the_graphs_pixels(demo_export, tmp_path):
    from cvdvae import Pipeline

    demo_weights(tmp_path / "demo.safetensors")
    from_weights = Pipeline.from_pretrained(tmp_path / "demo.safetensors")
    from_graph = Pipeline.from_pretrained(demo_export, "onnxruntime")
    assert from_weights.backend.name == "torch"
    a, b = (p(face(5), n=3, seed=4).samples for p in (from_weights, from_graph))
    assert np.abs(a.astype(int) - b).max() <= 1 and np.mean(a != b) < 1e-3


def test_an_export_folder_of_an_unknown_format_names_the_version_that_wrote_it(demo_export, tmp_path):
    import shutil

    from cvdvae import Pipeline

    folder = tmp_path / "future"
    shutil.copytree(demo_export, folder)
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "format": 7, "cvdvae_version": "3.1.4"}))
    with pytest.raises(CVDVAEError, match=r"format 7 \(written by cvdvae 3\.1\.4\); this cvdvae .* reads formats 1 and 2"):
        Pipeline.from_pretrained(folder)
    assert run_main([str(folder), "--input", "x.png"]) == 2
