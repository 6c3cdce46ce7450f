"""Engine building on a CPU: the builder config we insist on, the profile, and the check that
guards engine.plan, with TensorRT and CUDA replaced by recording fakes (tests/fakes.py).

The fake engines compute with ONNX Runtime on the export's own model.onnx (a correct engine)
or with a fault added (NaN in one sample, a small bias), so the check is exercised against
the real FP32 reference the export wrote.
"""

import enum
import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fakes import COMPUTE, FakeCuda, FakeTensorRT

from export import engine as engine_module
from export import profile
from export.tensorrt import BuiltPlan, EngineBuildFailed, configure
from runtime.backends.tensorrt import TensorRTBackend
from runtime.cli.export import main as export_main
from runtime.model_files import locate

ort = pytest.importorskip("onnxruntime")


# ------------------------------------------------------------------ builder config


class Flag(enum.Enum):
    TF32 = 7


class FakeConfig:
    """An IBuilderConfig that records flags and timing caches (TF32 starts on, as in TensorRT)."""

    def __init__(self):
        self.flags, self.cache = {Flag.TF32}, None

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def get_flag(self, flag):
        return flag in self.flags

    def create_timing_cache(self, data):
        if data == b"corrupt":
            raise RuntimeError("Error Code 1: Serialization (bad magic)")
        return SimpleNamespace(data=data)

    def set_timing_cache(self, cache, ignore_mismatch):
        assert ignore_mismatch is False
        if cache.data == b"made on another GPU":
            return False
        self.cache = cache
        return True


TRT = SimpleNamespace(BuilderFlag=Flag)


def test_fp32_engines_have_tf32_cleared_unless_asked():
    config = FakeConfig()
    assert configure(TRT, config, tf32=False, timing_cache=None) == [] and not config.get_flag(Flag.TF32)
    configure(TRT, config, tf32=True, timing_cache=None)
    assert config.get_flag(Flag.TF32)


@pytest.mark.parametrize("cache", [b"made on another GPU", b"corrupt"])
def test_an_unusable_timing_cache_is_one_warning_and_a_fresh_cache(cache):
    config = FakeConfig()
    warnings = configure(TRT, config, tf32=False, timing_cache=cache)
    assert len(warnings) == 1 and "timing cache" in warnings[0]
    assert config.cache.data == b""
    assert configure(TRT, FakeConfig(), tf32=False, timing_cache=b"good") == []


# ------------------------------------------------------------------------ profile


def test_profile_overrides_and_defaults():
    default = profile.Profile()
    assert default.max_batch * default.max_n == 16
    assert profile.requested(None, {}) == {"source": "default"}
    asked = profile.requested(None, {"max_n": 4})
    assert asked["source"] == "flags" and (asked["min_n"], asked["opt_n"], asked["max_n"]) == (1, 4, 4)
    again = profile.requested(asked, {"max_batch": 1})  # --engine-only keeps what was recorded
    assert (again["max_batch"], again["max_n"]) == (1, 4)
    assert profile.requested(asked, {}) == asked
    with pytest.raises(ValueError, match="1 <= min <= opt <= max"):
        profile.requested(None, {"min_n": 5, "max_n": 4})
    # FFHQ-256 in float16 (0.5 GiB of activations per sample): 16 samples need 16 GiB of 32 free ...
    fits, _ = profile.default_profile(2**29, 32 * 2**30)
    assert fits.max_batch * fits.max_n == 16
    # ... and a small GPU gets fewer, still at most half its free memory.
    small, basis = profile.default_profile(2**29, 5 * 2**30)
    samples = small.max_batch * small.max_n
    assert samples * 2**29 <= 2.5 * 2**30 and samples >= 4 and "GiB free" in basis


# --------------------------------------------------------------- add_engine / CLI


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A validated demo export: model.onnx, meta.json and the FP32 reference."""
    out = tmp_path_factory.mktemp("e") / "demo"
    assert export_main(["--demo", "--out", str(out), "--onnx-only", "--quiet"]) == 0
    return out


def ort_engine(folder, fault=None):
    """A compute function for the fake engine: ONNX Runtime on the folder's graph, plus ``fault``."""
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])

    def compute(lr, noise, temperature, hr_size):
        sr = session.run(["sr"], {"lr": lr, "noise": np.ascontiguousarray(noise),
                                  "temperature": np.ascontiguousarray(temperature)})[0]
        return fault(sr) if fault else sr

    return compute


@pytest.fixture
def gpu(monkeypatch, tmp_path):
    """TensorRT and a GPU, faked: records what the build was asked for, and the timing cache it
    found (each build adds a line to it); $CVDVAE_HOME in tmp_path."""
    cuda = FakeCuda()
    trt = FakeTensorRT(cuda)
    builds, caches_found = [], []
    monkeypatch.setenv("CVDVAE_HOME", str(tmp_path / "home"))

    def build_plan(onnx_path, options, warn):
        builds.append(options)
        found = options.builder.timing_cache.read_bytes() if options.builder.timing_cache.is_file() else b""
        caches_found.append(found)
        meta = json.loads((onnx_path.parent / "meta.json").read_text())
        (low_b, low_n, dim), _, (high_b, high_n, _) = options.shapes["noise"]
        spec = {"compute": gpu.compute, "hr_size": meta["hr_size"],
                "profile": {"batch": [low_b, 1, high_b], "n": [low_n, 1, high_n]},
                "io": {"lr": ["INPUT", "FLOAT", [-1, 3, meta["lr_size"], meta["lr_size"]]],
                       "noise": ["INPUT", "FLOAT", [-1, -1, dim]], "temperature": ["INPUT", "FLOAT", [-1, -1]],
                       "sr": ["OUTPUT", "FLOAT", [-1, -1, 3, meta["hr_size"], meta["hr_size"]]],
                       "non_finite": ["OUTPUT", "FLOAT", [-1, -1]]}}
        if gpu.fail_build:
            raise EngineBuildFailed("TensorRT could not build the engine (out of memory)")
        return BuiltPlan(json.dumps(spec).encode(), trt.__version__, found + b"timed\n")

    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(engine_module, "build_plan", build_plan)
    monkeypatch.setattr(engine_module, "TorchCuda", lambda: cuda)
    monkeypatch.setattr("export.exporter.tensorrt_unavailable_reason", lambda: None)
    gpu.compute, gpu.fail_build, gpu.builds, gpu.cuda, gpu.trt = "ort", False, builds, cuda, trt
    gpu.caches_found = caches_found
    return gpu


def copy_export(exported, tmp_path):
    import shutil

    folder = tmp_path / "demo"
    shutil.copytree(exported, folder)
    return folder


def test_engine_only_builds_checks_and_records(exported, tmp_path, gpu):
    folder = copy_export(exported, tmp_path)
    COMPUTE["ort"] = ort_engine(folder)
    assert export_main(["--engine-only", str(folder), "--quiet"]) == 0
    meta = json.loads((folder / "meta.json").read_text())
    record = meta["engine"]
    assert record["plan_sha256"] == hashlib.sha256((folder / "engine.plan").read_bytes()).hexdigest()
    assert record["tf32"] is False and record["built_with"].startswith("polygraphy ")
    check = record["validation"]
    assert check["passed"] and check["reference"] == "onnxruntime-fp32" and check["arithmetic"] == "fp32"
    assert [(c["batch"], c["n"]) for c in check["cases"]] == [(1, 1), (2, 3)]
    assert all(c["max_abs_error"] < 1e-4 and c["non_finite"] == 0 for c in check["cases"])
    assert record["profile"] == profile.Profile().to_dict() and "16 samples" in record["profile_basis"]
    backend = TensorRTBackend(locate(folder), trt=gpu.trt, cuda=gpu.cuda)  # the runtime takes it
    assert backend.max_batch == 2 and backend.max_n == 8


@pytest.mark.parametrize("fault,message", [
    (lambda sr: np.where(np.arange(sr.shape[1])[None, :, None, None, None] == 1, np.nan, sr), "NaN/Inf"),
    (lambda sr: sr + 1e-2, "max abs 1.00e-02"),
])
def test_an_engine_that_disagrees_is_rejected_and_nothing_is_lost(exported, tmp_path, gpu, capsys, fault, message):
    folder = copy_export(exported, tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    COMPUTE["bad"] = ort_engine(folder, fault)
    gpu.compute = "bad"
    assert export_main(["--engine-only", str(folder), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "engine check FAILED" in err[0] and message in err[0]
    assert "engine.plan was not written" in err[0] and "polygraphy" in err[0]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no plan, meta.json as it was


def test_the_tf32_bound_is_psnr(exported, tmp_path, gpu):
    """An error of 1e-2 everywhere fails an FP32 engine and passes a TF32 one (40 dB >= 30 dB)."""
    folder = copy_export(exported, tmp_path)
    COMPUTE["off"] = ort_engine(folder, lambda sr: sr + 1e-2)
    gpu.compute = "off"
    assert export_main(["--engine-only", str(folder), "--quiet", "--tf32"]) == 0
    record = json.loads((folder / "meta.json").read_text())["engine"]
    assert record["tf32"] is True and record["validation"]["arithmetic"] == "tf32"
    assert all(39.9 < c["psnr_db"] < 40.1 for c in record["validation"]["cases"])


def test_engine_only_keeps_the_recorded_profile(tmp_path, gpu):
    folder = tmp_path / "p"
    assert export_main(["--demo", "--out", str(folder), "--onnx-only", "--quiet", "--max-n", "4",
                        "--max-batch", "1"]) == 0
    COMPUTE["ort"] = ort_engine(folder)
    assert export_main(["--engine-only", str(folder), "--quiet"]) == 0
    assert gpu.builds[-1].shapes["noise"][2][:2] == (1, 4)
    assert export_main(["--engine-only", str(folder), "--quiet", "--overwrite", "--max-batch", "2"]) == 0
    assert gpu.builds[-1].shapes["noise"][2][:2] == (2, 4)  # a flag overrides one value, the rest stays
    assert json.loads((folder / "meta.json").read_text())["engine"]["profile"]["max_n"] == 4


def test_the_default_profile_fits_the_free_memory(exported, tmp_path, gpu):
    folder = copy_export(exported, tmp_path)
    COMPUTE["ort"] = ort_engine(folder)
    per_sample = locate(folder).activation_bytes_per_sample()
    gpu.cuda.free_bytes = 6 * per_sample  # half of it holds 3 samples
    assert export_main(["--engine-only", str(folder), "--quiet"]) == 0
    record = json.loads((folder / "meta.json").read_text())["engine"]
    assert (record["profile"]["max_batch"], record["profile"]["max_n"]) == (1, 3)
    assert "3 here" in record["profile_basis"]
    assert record["validation"]["passed"]  # the (2, 3) case ran in calls the profile allows


def test_a_failed_build_keeps_the_validated_onnx_folder(tmp_path, gpu, capsys):
    gpu.fail_build = True
    out = tmp_path / "x"
    assert export_main(["--demo", "--out", str(out), "--quiet"]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no engine built" in lines[0] and "--engine-only" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "model.onnx", "reference.npz"]
    out2 = tmp_path / "y"
    assert export_main(["--demo", "--out", str(out2), "--quiet", "--require-engine"]) == 1
    assert sorted(p.name for p in out2.iterdir()) == ["meta.json", "model.onnx", "reference.npz"]


def test_a_timing_cache_that_cannot_be_written_keeps_the_plan(exported, tmp_path, gpu, capsys):
    folder = copy_export(exported, tmp_path)
    COMPUTE["ort"] = ort_engine(folder)
    cache = tmp_path / "missing-folder" / "trt.cache"
    assert export_main(["--engine-only", str(folder), "--quiet", "--timing-cache", str(cache)]) == 0
    err = capsys.readouterr().err
    assert "timing cache could not be written" in err and (folder / "engine.plan").is_file()


def test_builds_share_one_timing_cache_per_tensorrt_version_and_gpu(exported, tmp_path, gpu):
    """Without --timing-cache a build reads $CVDVAE_HOME's cache for its TensorRT and GPU, and writes
    back what it timed; another GPU has its own."""
    folder = copy_export(exported, tmp_path)
    COMPUTE["ort"] = ort_engine(folder)
    caches = tmp_path / "home" / "cache" / "tensorrt"
    own = caches / "timing-10.13.0.35-Fake_GPU-sm9.0.cache"
    for build in range(2):
        assert export_main(["--engine-only", str(folder), "--quiet", "--overwrite"]) == 0
        assert gpu.builds[-1].builder.timing_cache == own and gpu.caches_found[-1] == b"timed\n" * build
    assert own.read_bytes() == b"timed\n" * 2
    assert json.loads((folder / "meta.json").read_text())["engine"]["timing_cache"] == str(own)
    gpu.cuda.info = lambda: {"gpu": "Other GPU 80GB", "compute_capability": "8.6"}
    assert export_main(["--engine-only", str(folder), "--quiet", "--overwrite"]) == 0
    assert gpu.builds[-1].builder.timing_cache == caches / "timing-10.13.0.35-Other_GPU_80GB-sm8.6.cache"
    assert gpu.caches_found[-1] == b"" and own.read_bytes() == b"timed\n" * 2


def test_an_unchecked_engine_is_recorded_as_unchecked(tmp_path, gpu, capsys):
    folder = tmp_path / "nv"
    assert export_main(["--demo", "--out", str(folder), "--onnx-only", "--quiet", "--no-validate"]) == 0
    COMPUTE["ort"] = ort_engine(folder)
    assert export_main(["--engine-only", str(folder), "--quiet"]) == 2  # no reference: say so
    assert "reference.npz not found" in capsys.readouterr().err
    assert export_main(["--engine-only", str(folder), "--quiet", "--no-validate"]) == 0
    assert json.loads((folder / "meta.json").read_text())["engine"]["validation"] == {
        "skipped": "validation off", "passed": None}
    assert "not checked" in capsys.readouterr().err


def test_polygraphy_run_on_the_reference_inputs_reproduces_the_reference(exported, tmp_path):
    """docs/guides/debugging-engine.md's commands: Polygraphy's ONNX Runtime runner on the inputs written by
    export.polygraphy_inputs gives exactly the reference the engine check uses."""
    import subprocess

    from conftest import REPO
    from polygraphy.json import load_json

    from export.reference import load

    inputs, outputs = tmp_path / "inputs.json", tmp_path / "ort.json"
    run = [sys.executable, "-m", "runtime.cli.polygraphy_inputs", str(exported), "--out", str(inputs)]
    assert subprocess.run(run, cwd=REPO, capture_output=True).returncode == 0
    polygraphy = [str(Path(sys.executable).parent / "polygraphy"), "run", str(exported / "model.onnx"), "--onnxrt",
                  "--load-inputs", str(inputs), "--save-outputs", str(outputs)]
    r = subprocess.run(polygraphy, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    results = [out for _, runs in load_json(str(outputs)).items() for out in runs]
    cases, source = load(exported / "reference.npz")
    assert source == "onnxruntime-fp32" and len(results) == len(cases) == 2
    for out, case in zip(results, cases):
        np.testing.assert_array_equal(out["sr"], case.sr)


def test_flips_and_logistic_tails_are_told_apart_from_errors():
    """A pixel off where the mixture choice was a near tie is a flip; one whose logistic draw is
    in the float32-ill-conditioned tail is a tail pixel; anywhere else the error counts."""
    from export.engine_check import away_from_flips, logistic_tails

    reference = np.full((1, 1, 3, 4, 4), 0.5)
    margin = np.ones((1, 1, 4, 4))
    margin[0, 0, 0, 0] = 1e-3                      # a near tie
    pixel_noise = np.zeros((1, 2 + 3, 4, 4))
    pixel_noise[0, 2, 1, 1] = 4.04                 # R's logistic draw deep in the tail
    tails = logistic_tails(pixel_noise, num_mixtures=2)[None]
    assert tails.sum() == 1 and tails[0, 0, 1, 1]
    sr = reference.copy()
    sr[0, 0, :, 0, 0] += 0.3                        # flipped mixture
    sr[0, 0, 0, 1, 1] += 2e-4                       # tail
    assert away_from_flips(sr, reference, margin, 1e-4, tails) == (0.0, 1, 1)
    sr[0, 0, 2, 3, 3] += 5e-5                       # within tolerance
    assert away_from_flips(sr, reference, margin, 1e-4, tails)[0] == pytest.approx(5e-5)
    sr[0, 0, 1, 2, 2] += 3e-4                       # a real error
    max_abs, flips, tail = away_from_flips(sr, reference, margin, 1e-4, tails)
    assert max_abs == pytest.approx(3e-4) and (flips, tail) == (1, 1)
    assert away_from_flips(sr, reference, margin, 1e-4)[1:] == (1, 0)  # without tails: the tail pixel counts
