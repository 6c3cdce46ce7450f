"""Smoke test of benchmarks/latency.py on the tiny model: it runs and its JSON has every field."""

import json
import subprocess
import sys

import pytest

from conftest import REPO


def test_latency_benchmark_smoke(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "latency.py"), "--demo", "--n", "1,2",
                        "--warmup", "0", "--iters", "1", "--backends", "torch,onnxruntime", "--json", str(out)],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr
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
    assert "backend" in r.stdout and "matmul peak" in r.stdout


def test_the_cpu_peers_openvino_and_torch_compile(tmp_path):
    """With OpenVINO's bf16 where the CPU has it: its row says what ran, against its own peak."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed: its benchmark row is not measured")
    from runtime.backends.cpu_features import bf16_missing_here

    bf16 = bf16_missing_here() is None
    backends = ["torch", "openvino", "torch-compile", *(["openvino-bf16"] if bf16 else [])]
    if not bf16:
        print(f"openvino-bf16 not measured: {bf16_missing_here()}")
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "latency.py"), "--demo", "--n", "2", "--warmup",
                        "1", "--iters", "1", "--backends", ",".join(backends), "--json", str(out)],
                       capture_output=True, text=True, cwd=REPO, timeout=900)
    assert r.returncode == 0, r.stderr
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


def check_rows(rows):
    for row in rows:
        assert {"median_ms", "p90_ms", "p99_ms", "samples_per_s", "speedup", "gflops", "peak_fraction", "noise_ms",
                "load_s", "peak_rss_mib", "psnr_db", "max_abs", "max_abs_away_from_flips", "flipped_pixels", "flagged",
                "non_finite_samples", "tf32"} <= row.keys()
        assert row["samples_per_s"] > 0 and row["peak_rss_mib"] > 0 and row["calls"] == 1
        assert not row["flagged"] and row["non_finite_samples"] == 0 and row["tf32"] is False


def test_gpu_check_says_in_one_line_when_there_is_no_gpu():
    import os

    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: scripts/gpu-check.sh runs for real")
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh")], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "no CUDA GPU visible to PyTorch" in r.stderr
