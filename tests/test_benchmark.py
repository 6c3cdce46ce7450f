"""Smoke test of benchmarks/latency.py on the tiny model: it runs and its JSON has every field."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, latency_benchmark


def test_latency_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert latency_benchmark("--demo", "--n", "1,2", "--warmup", "0", "--iters", "1", "--backends",
                             "torch,onnxruntime", "--json", out) == 0
    results = json.loads(out.read_text())
    env = results["environment"]
    assert {"cpu", "cpu_count", "threads", "torch", "onnxruntime", "openvino", "tensorrt", "python"} <= env.keys()
    assert results["matmul_peak"]["cpu_fp32_gflops"] > 0
    rows = results["results"]
    assert [(r["backend"], r["n"]) for r in rows] == [("torch", 1), ("torch", 2), ("onnxruntime", 1),
                                                      ("onnxruntime", 2)]
    check_rows(rows)
    assert rows[2]["provider"] == "CPUExecutionProvider"
    assert rows[2]["max_abs_away_from_flips"] <= 1e-4  # ONNX Runtime and PyTorch agree on the same noise
    printed = capsys.readouterr().out
    assert "backend" in printed and "matmul peak" in printed


def test_the_cpu_peers_openvino_and_torch_compile(tmp_path):
    """With OpenVINO's bf16 where the CPU has it: its row says what ran, against its own peak."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed: its benchmark row is not measured")
    from runtime.backends.cpu_features import bf16_missing_here

    bf16 = bf16_missing_here() is None
    backends = ["torch", "openvino", "torch-compile", *(["openvino-bf16"] if bf16 else [])]
    if not bf16:
        print(f"openvino-bf16 not measured: {bf16_missing_here()}")
    out = tmp_path / "bench.json"
    assert latency_benchmark("--demo", "--n", "2", "--warmup", "1", "--iters", "1", "--backends", ",".join(backends),
                             "--json", out) == 0
    results = json.loads(out.read_text())
    rows = {row["backend"]: row for row in results["results"]}
    assert set(rows) == set(backends), rows
    check_rows(rows.values())
    if bf16:
        row, peaks = rows["openvino-bf16"], results["matmul_peak"]
        assert row["precision"] == "bf16" and "residual" in row["fp32_groups"]  # as OpenVINO reports it
        assert peaks["cpu_bf16_gflops"] > 0
        assert row["peak_fraction"] == pytest.approx(row["gflops"] / peaks["cpu_bf16_gflops"])
    assert rows["openvino"]["provider"] == "CPU" and rows["openvino"]["max_abs"] <= 1e-4
    assert rows["torch-compile"]["device"] == "cpu" and rows["torch-compile"]["warmup_s"] > 0  # compile, apart
    assert rows["torch-compile"]["max_abs"] <= 1e-4


def test_a_run_stopped_midway_keeps_what_it_measured(tmp_path, demo_export):
    """The JSON is written after each backend: frozen (SIGSTOP) as soon as the first backend's JSON is
    there, then killed with its worker, the run keeps the rows it wrote and names the backends left."""
    import signal
    import time

    out = tmp_path / "bench.json"
    backends = ["torch", "onnxruntime", "openvino"]
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "latency.py"), "--demo", "--n", "1", "--warmup",
                             "0", "--iters", "1", "--backends", ",".join(backends), "--json", str(out),
                             "--engine-dir", str(demo_export)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not out.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no backend's JSON was written"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGSTOP)  # the file is written whole (atomically): nothing more happens now
    assert proc.poll() is None, "the run ended before it could be stopped midway"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    results = json.loads(out.read_text())
    measured = [row["backend"] for row in results["results"]]
    assert measured[:1] == ["torch"] and measured + results["backends_left"] == backends, results
    check_rows(results["results"])


def check_rows(rows):
    for row in rows:
        assert {"median_ms", "p90_ms", "p99_ms", "samples_per_s", "speedup", "gflops", "peak_fraction", "noise_ms",
                "load_s", "peak_rss_mib", "psnr_db", "max_abs", "max_abs_away_from_flips", "flipped_pixels", "flagged",
                "non_finite_samples", "tf32"} <= row.keys()
        assert row["samples_per_s"] > 0 and row["peak_rss_mib"] > 0 and row["calls"] == 1
        assert not row["flagged"] and row["non_finite_samples"] == 0 and row["tf32"] is False


def test_gpu_check_without_a_gpu_writes_every_promised_file_and_says_why(tmp_path):
    """``OUT`` set, no GPU: exit 3, the log, pytest.xml, and each JSON saying it was skipped."""
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh")], capture_output=True, text=True, cwd=REPO,
                       timeout=300, env={**os.environ, "OUT": str(out), "PYTHON": sys.executable})
    if r.returncode == 0:
        pytest.skip("a CUDA GPU is visible here: the check ran for real")
    assert r.returncode == 3 and "no CUDA GPU" in r.stderr.strip().splitlines()[-1], r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["bench-compile.json", "bench.json", "gpu-check.log", "parity.json",
                                                     "pytest.xml"]
    for name in ("parity", "bench", "bench-compile"):
        assert "no CUDA GPU" in json.loads((out / f"{name}.json").read_text())["skipped"]
    assert "<testsuite" in (out / "pytest.xml").read_text() and "=== tests: exit" in (out / "gpu-check.log").read_text()


def test_gpu_parity_runs_its_comparisons_on_the_cpu(tmp_path):
    """``--device cpu`` drives every comparison but the CUDA graphs: the CPU against itself is
    exact, the noise equal, and fp16 agrees with the CPU's fp16 emulation. Without ``--device``
    and without CUDA it says why."""
    import torch

    out = tmp_path / "parity.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_parity.py"), "--demo", "--device", "cpu",
                        "--json", str(out)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(out.read_text())
    fp32 = got["against_cpu_fp32"]["fp32"]
    assert fp32["max_abs"] == 0 and fp32["non_finite"] == 0
    assert got["noise"]["different"] == 0 and got["noise"]["values"] > 0
    assert got["fp16_against_cpu_emulation"]["psnr_db"] > 60 and "skipped" in got["cuda_graphs"]
    assert 19 <= got["against_cpu_fp32"]["bf16"]["psnr_db"] < 60  # bf16 ran, within the bf16 bound
    if not torch.cuda.is_available():
        r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_parity.py"), "--demo"], capture_output=True,
                           text=True, cwd=REPO, timeout=120)
        assert r.returncode == 0 and "no CUDA device" in json.loads(r.stdout)["skipped"]


def test_the_soaks_burner_keeps_working_past_what_its_pipe_holds(monkeypatch):
    """benchmarks/flake_soak.py's burner prints a line of progress now and then, for hours: a stand-in
    that prints them as fast as it can must get far past the 64 kB a pipe holds (an unread pipe would
    stop it there, and the rounds after would run on an idle machine)."""
    import importlib.util
    import time

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # its sibling modules, as when run as a script
    spec = importlib.util.spec_from_file_location("flake_soak", REPO / "benchmarks" / "flake_soak.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    monkeypatch.setattr(soak, "BURNER", "import itertools\nfor n in itertools.count(1): print(n, n / 1000, flush=True)")
    burner = soak.Burner(1)
    try:
        deadline = time.monotonic() + 60
        while burner.progress[0] < 100_000:  # about 1.2 MB of lines
            assert time.monotonic() < deadline, f"the burner stopped at {burner.progress}"
            time.sleep(0.05)
    finally:
        work = burner.stop()
    assert work["matmuls"] >= 100_000 and work["seconds"] == round(work["matmuls"] / 1000, 1)
