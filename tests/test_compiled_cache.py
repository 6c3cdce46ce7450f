"""Compiled graphs kept between starts (runtime.compiled_cache): OpenVINO's compiled model and ONNX
Runtime's optimised graph are made once and imported after; a damaged or foreign entry is said once
and made again; a read-only export folder keeps its cache under $CVDVAE_HOME; model.onnx is hashed
again only when it changed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_export

from cvdvae.errors import CVDVAEError
from runtime import compiled_cache
from runtime.backends import open_backend
from runtime.model_files import locate, verify_onnx

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino, or the cpu extra)")

LR = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8)).astype(np.float32)
T = np.array([0.8, 0.0, 1.2], np.float32)


@pytest.fixture
def demo(tmp_path, demo_export, monkeypatch):
    monkeypatch.setenv("CVDVAE_HOME", str(tmp_path / "home"))
    return copy_export(demo_export, tmp_path / "demo")


@pytest.fixture(scope="module")
def expected(demo_export, tmp_path_factory):
    """The demo's samples from a compiled (never cached) model: its own folder, compiled once."""
    folder = copy_export(demo_export, tmp_path_factory.mktemp("uncached") / "demo")
    return open_backend(locate(folder), "openvino").sample(LR, 3, 0, T).samples


@pytest.fixture
def compiles(monkeypatch):
    """How many times OpenVINO compiled a graph (an imported model is not compiled)."""
    calls = []
    compile_model = ov.Core.compile_model

    def recording(self, *args, **kwargs):
        calls.append(args[0])
        return compile_model(self, *args, **kwargs)

    monkeypatch.setattr(ov.Core, "compile_model", recording)
    return calls


def entries(folder: Path, engine: str = "openvino") -> list[Path]:
    return sorted(folder.glob(f"{engine}-*.entry"))


def test_the_second_start_imports_the_compiled_model(demo, compiles, expected):
    first = open_backend(locate(demo), "openvino")
    assert len(compiles) == 1 and first.timings.compile > 0 and first.note is None
    assert len(entries(demo / "cache")) == 1
    second = open_backend(locate(demo), "openvino")
    assert len(compiles) == 1 and second.timings.compile == 0 and second.note is None
    # bit-identical to a compiled model, call after call
    for backend in (first, second, second):
        assert np.array_equal(backend.sample(LR, 3, 0, T).samples, expected)


def test_a_kept_model_is_imported_while_the_caller_goes_on(demo, compiles, expected, monkeypatch):
    """The open returns while OpenVINO imports; the first call waits for it. An entry that cannot be
    imported after all is compiled again on that thread, with one note."""
    import threading

    open_backend(locate(demo), "openvino")
    release, importing = threading.Event(), []
    import_model = ov.Core.import_model

    def held(self, *args, **kwargs):
        importing.append(threading.current_thread())
        assert release.wait(timeout=60), "the test never let the import go on"
        if len(importing) == 2:
            raise RuntimeError("blob\nfrom another build")
        return import_model(self, *args, **kwargs)

    monkeypatch.setattr(ov.Core, "import_model", held)
    for expected_note in (None, "could not be imported (blob)"):
        backend = open_backend(locate(demo), "openvino")  # returns with the import held
        assert importing[-1] is not threading.main_thread() and backend.note is None
        release.set()
        assert np.array_equal(backend.sample(LR, 3, 0, T).samples, expected)
        assert backend.timings.load > 0 and (backend.note is None) == (expected_note is None)
        assert expected_note is None or (expected_note in backend.note and "compiled again" in backend.note)
        release.clear()
    assert len(compiles) == 2


@pytest.mark.parametrize("mapped", [False, True])
def test_an_entry_is_its_payload_read_or_mapped_and_a_mapping_outlives_its_replacement(tmp_path, mapped):
    payload = np.random.default_rng(0).integers(0, 256, 10_007, np.uint8).tobytes()
    entry, key = tmp_path / "x.entry", {"model.onnx": "a" * 64}
    assert compiled_cache.write_entry(entry, key, payload) is None
    read, why = compiled_cache.read_entry(entry, key, mapped)
    assert why is None and isinstance(read, np.memmap) == mapped and bytes(read) == payload
    assert compiled_cache.write_entry(entry, key, b"another payload") is None  # replaced, as entries are
    assert bytes(read) == payload


def test_threads_given_at_import_are_honoured_and_share_the_entry(demo, compiles):
    open_backend(locate(demo), "openvino", threads=2)
    one = open_backend(locate(demo), "openvino", threads=1)
    assert len(compiles) == 1 and len(entries(demo / "cache")) == 1
    assert one.compiled.get_property("INFERENCE_NUM_THREADS") == 1


def test_the_key_changes_with_each_field_it_holds(monkeypatch):
    from runtime.backends import openvino as backend_module
    from runtime.backends.openvino import cache_key, compile_config

    core = ov.Core()
    base = cache_key(ov, core, "a" * 64, compile_config("fp32"), ())
    with monkeypatch.context() as patch:
        patch.setattr(backend_module, "cpu_identity", lambda: {"CPU": "Other CPU", "CPU flags": "f" * 64})
        other_cpu = cache_key(ov, core, "a" * 64, compile_config("fp32"), ())
    with monkeypatch.context() as patch:
        patch.setattr(ov, "__version__", "2099.1")
        other_openvino = cache_key(ov, core, "a" * 64, compile_config("fp32"), ())
    changed = {
        "CPU": other_cpu,
        "OpenVINO": other_openvino,
        "model.onnx": cache_key(ov, core, "b" * 64, compile_config("fp32"), ()),
        "precision": cache_key(ov, core, "a" * 64, compile_config("bf16"), ()),
        "fp32 groups": cache_key(ov, core, "a" * 64, compile_config("bf16"), ("residual",)),
    }
    keys = [base, *changed.values()]
    assert len({json.dumps(k, sort_keys=True) for k in keys}) == len(keys)
    # threads and performance counters are given at import: not in the key
    assert cache_key(ov, core, "a" * 64, compile_config("fp32", threads=1, profile=True), ()) == base
    # every field but the graph also names another file (entries of several CPUs share a folder); a
    # re-exported graph's entry takes its predecessor's place
    paths = [compiled_cache.entry_path(Path("cache"), "openvino", k) for k in keys]
    assert len(set(paths)) == len(keys) - 1 and paths[0] == paths[1 + list(changed).index("model.onnx")]


def damage(entry: Path, how: str) -> None:
    data = bytearray(entry.read_bytes())
    if how == "truncated":
        entry.write_bytes(data[: len(data) - 1000])
    elif how == "flipped":
        stat = entry.stat()
        data[len(data) // 2: len(data) // 2 + 16] = bytes(b ^ 0xFF for b in data[len(data) // 2: len(data) // 2 + 16])
        entry.write_bytes(data)
        os.utime(entry, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime: only the ctime moves


@pytest.mark.parametrize("how,why", [("truncated", "is truncated"), ("flipped", "is damaged (its sha256")])
def test_a_damaged_entry_is_said_once_and_compiled_again(demo, compiles, expected, monkeypatch, how, why):
    monkeypatch.setattr(compiled_cache, "SETTLED_S", 0.0)  # remember hashes at once (the entries are seconds old)
    open_backend(locate(demo), "openvino").wait_ready()
    open_backend(locate(demo), "openvino").wait_ready()  # the entry verified, its hash remembered; let go of
    [entry] = entries(demo / "cache")
    assert (entry.parent / f"{entry.name}.sha256.json").is_file()
    damage(entry, how)
    rebuilt = open_backend(locate(demo), "openvino")
    assert len(compiles) == 2 and rebuilt.note.count("compiled again") == 1 and why in rebuilt.note
    assert np.array_equal(rebuilt.sample(LR, 3, 0, T).samples, expected)
    again = open_backend(locate(demo), "openvino")  # replaced by a good one
    assert len(compiles) == 2 and again.note is None


def test_an_entry_made_for_another_key_is_said_once_and_compiled_again(demo, compiles, expected, monkeypatch):
    from runtime.backends import openvino as backend_module

    real = backend_module.cpu_identity()
    with monkeypatch.context() as patch:
        patch.setattr(backend_module, "cpu_identity", lambda: {**real, "CPU": "Another CPU"})
        open_backend(locate(demo), "openvino")
    [foreign] = entries(demo / "cache")
    open_backend(locate(demo), "openvino")  # another CPU's entry sits beside this one's
    assert len(compiles) == 2 and len(entries(demo / "cache")) == 2
    [own] = [entry for entry in entries(demo / "cache") if entry != foreign]
    os.replace(foreign, own)  # another CPU's model where this CPU's should be
    rebuilt = open_backend(locate(demo), "openvino")
    assert len(compiles) == 3 and rebuilt.note.count("compiled again") == 1
    assert "was made for another CPU" in rebuilt.note and str(own) in rebuilt.note
    assert np.array_equal(rebuilt.sample(LR, 3, 0, T).samples, expected)


def test_a_read_only_export_folder_keeps_its_cache_under_cvdvae_home(demo, compiles, expected, tmp_path):
    (demo / "cache").write_text("in the way")  # the folder's cache/ cannot be made
    first = open_backend(locate(demo), "openvino")
    [place] = (tmp_path / "home" / "cache").iterdir()
    assert len(entries(place)) == 1 and first.note is None
    second = open_backend(locate(demo), "openvino")
    assert len(compiles) == 1 and np.array_equal(second.sample(LR, 3, 0, T).samples, expected)
    # with $CVDVAE_HOME unwritable too, it says so, and still runs
    os.environ["CVDVAE_HOME"] = str(demo / "cache" / "home")  # under a file (the fixture restores it)
    third = open_backend(locate(demo), "openvino")
    assert len(compiles) == 2 and "cannot be kept" in third.note and "compiled at every start" in third.note


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_folder_without_write_permission_keeps_its_cache_under_cvdvae_home(demo, compiles, tmp_path):
    demo.chmod(0o555)
    try:
        open_backend(locate(demo), "openvino")
        open_backend(locate(demo), "openvino")
    finally:
        demo.chmod(0o755)
    [place] = (tmp_path / "home" / "cache").iterdir()
    assert len(compiles) == 1 and len(entries(place)) == 1 and not (demo / "cache").exists()


def test_model_onnx_is_hashed_again_only_when_it_changed(demo, monkeypatch):
    hashed = []
    sha256_file = compiled_cache.sha256_file
    monkeypatch.setattr(compiled_cache, "sha256_file", lambda path: hashed.append(path) or sha256_file(path))
    files = locate(demo)
    monkeypatch.setattr(compiled_cache, "SETTLED_S", 1e9)
    verify_onnx(files)
    verify_onnx(files)
    assert len(hashed) == 2  # a file written within SETTLED_S is not remembered (a second write could keep its stamp)
    monkeypatch.setattr(compiled_cache, "SETTLED_S", 0.0)
    verify_onnx(files)
    verify_onnx(files)
    assert len(hashed) == 3
    onnx = demo / "model.onnx"
    stat = onnx.stat()
    data = bytearray(onnx.read_bytes())
    data[-100] ^= 0x01
    onnx.write_bytes(data)
    os.utime(onnx, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: the ctime tells
    with pytest.raises(CVDVAEError, match="does not match its meta.json"):
        verify_onnx(files)
    assert len(hashed) == 4


# ------------------------------------------------------------------------------------ ONNX Runtime


@pytest.fixture
def ort_sessions(monkeypatch):
    """What each ONNX Runtime session was made from: a path, or the bytes of a kept graph."""
    import onnxruntime as ort

    made = []
    session = ort.InferenceSession

    def recording(source, options=None, **kwargs):
        made.append(("bytes" if isinstance(source, bytes) else "path", options.graph_optimization_level))
        return session(source, options, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    return made


def test_onnx_runtime_keeps_its_optimised_graph(demo, ort_sessions):
    import onnxruntime as ort

    first = open_backend(locate(demo), "onnxruntime-cpu")
    second = open_backend(locate(demo), "onnxruntime-cpu")
    assert ort_sessions == [("path", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                            ("bytes", ort.GraphOptimizationLevel.ORT_DISABLE_ALL)]
    assert first.note is None and second.note is None and len(entries(demo / "cache", "onnxruntime")) == 1
    assert np.array_equal(first.sample(LR, 3, 0, T).samples, second.sample(LR, 3, 0, T).samples)
    [entry] = entries(demo / "cache", "onnxruntime")
    damage(entry, "truncated")
    third = open_backend(locate(demo), "onnxruntime-cpu")
    assert ort_sessions[-1][0] == "path" and "is truncated" in third.note and "optimised again" in third.note


def test_a_graph_with_external_weights_is_optimised_at_every_start(tmp_path, monkeypatch):
    """ONNX Runtime's optimised copy of a model.onnx + model.onnx.data graph still reads the weights
    from there: nothing is kept, nothing is said, the samples are the same."""
    from export import onnx_passes
    from runtime.cli.export import main as export_main

    monkeypatch.setattr(onnx_passes, "PROTOBUF_LIMIT", 10_000)
    out = tmp_path / "ext"
    assert export_main(["--demo", "--out", str(out), "--onnx-only", "--quiet", "--no-validate"]) == 0
    first, second = (open_backend(locate(out), "onnxruntime-cpu") for _ in range(2))
    assert first.note is None and second.note is None and not entries(out / "cache", "onnxruntime")
    assert np.array_equal(first.sample(LR, 3, 0, T).samples, second.sample(LR, 3, 0, T).samples)
