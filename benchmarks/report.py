"""Rows from the workers' raw results: speedups, GFLOP/s against the matmul peak, agreement with
PyTorch FP32, NaN/Inf counts; and the printed table."""

from __future__ import annotations

FP32_MAX_ABS = 1e-4  # a float32 backend (TF32 off) that strays further, flips and tails apart, is flagged


def agreement_with(output, reference, margin, tails, precision: str, tf32: bool, fp32_groups=()) -> dict:
    """PSNR, max abs error (over all pixels, and away from mixture flips and float32-ill-conditioned
    logistic tails, both counted) and NaN/Inf count against torch FP32, and whether to flag it.
    ``fp32_groups``: what a bf16 CPU engine kept in float32 (judged by the shipped set's bound)."""
    from export.engine_check import away_from_flips
    from export.precision import MIN_PSNR_DB, compare
    from runtime.backends.openvino_precision import SHIPPED_MIN_PSNR_DB

    a = compare(output, reference)
    away, flips, tail = away_from_flips(output, reference, margin, FP32_MAX_ABS, tails)
    if precision == "fp32" and not tf32:
        bad = away > FP32_MAX_ABS
    elif precision == "bf16" and fp32_groups:
        bad = a.psnr_db < SHIPPED_MIN_PSNR_DB
    else:  # TF32 keeps float16's 10-bit mantissa
        bad = a.psnr_db < MIN_PSNR_DB["fp16" if precision == "fp32" else precision]
    return {"psnr_db": a.psnr_db, "max_abs": a.max_abs_error, "max_abs_away_from_flips": away,
            "flipped_pixels": flips, "tail_pixels": tail, "non_finite": a.non_finite,
            "flagged": bool(bad or a.non_finite)}


def matching_peak(device: str, precision: str) -> str:
    """The matmul peak a backend is measured against: the GPU's fp16 one for reduced precision,
    the CPU's bf16 one for bf16 on a CPU."""
    if device == "cuda":
        return "gpu_fp32_gflops" if precision == "fp32" else "gpu_fp16_gflops"
    return "cpu_bf16_gflops" if precision == "bf16" else "cpu_fp32_gflops"


def summarise(raw: dict, work, peaks: dict, env: dict, device: str) -> dict:
    reference = raw.get("torch", {})
    baseline = {(s["batch"], s["n"]): s for s in reference.get("shapes", [])}
    rows = []
    for backend, result in raw.items():
        if "error" in result:
            rows.append({"backend": backend, "error": result["error"]})
            continue
        for s in result["shapes"]:
            rows.append(_row(backend, result, s, baseline, raw, work, peaks))
    return {"environment": env, "matmul_peak": peaks, "device": device, "results": rows}


def _row(backend: str, result: dict, s: dict, baseline: dict, raw: dict, work, peaks: dict) -> dict:
    key = (s["batch"], s["n"])
    seconds = s["median_ms"] / 1000
    row = {"backend": backend, "device": result["device"], "precision": result["precision"],
           "tf32": result.get("tf32", False), "provider": result.get("provider"), "batch": s["batch"], "n": s["n"],
           "median_ms": s["median_ms"], "p90_ms": s["p90_ms"], "p99_ms": s["p99_ms"], "calls": s["calls"],
           "samples_per_s": s["batch"] * s["n"] / seconds, "gflops": work.flops(s["batch"], s["n"]) / seconds / 1e9,
           "noise_ms": s["noise_ms"], "noise_share": s["noise_ms"] / s["median_ms"], "load_s": result["load_s"],
           "peak_rss_mib": result["peak_rss_mib"], "device_peak_mib": s.get("device_peak_mib"),
           "non_finite_samples": s["non_finite_samples"]}
    for optional in ("channels_last", "warmup_s"):
        if optional in s:
            row[optional] = s[optional]
    for optional in ("cuda_graphs", "samples_per_call", "fp32_groups"):
        if result.get(optional) is not None:
            row[optional] = result[optional]
    peak_key = matching_peak(result["device"], result["precision"])
    if peak_key in peaks:
        row["peak_fraction"] = row["gflops"] / peaks[peak_key]
    if key in baseline:
        row["speedup"] = baseline[key]["median_ms"] / s["median_ms"]
        name = f"{key[0]}x{key[1]}"
        reference = raw["torch"]["outputs"]
        row.update(agreement_with(result["outputs"][name], reference[name], reference[f"{name}-margin"],
                                  reference[f"{name}-tails"], result["precision"], row["tf32"],
                                  result.get("fp32_groups") or ()))
    row["flagged"] = bool(row.get("flagged") or row["non_finite_samples"])
    return row


def print_table(results: dict) -> None:
    env, peaks = results["environment"], results["matmul_peak"]
    print(f"machine: {env['cpu']} ({env['cpu_count']} cores, {env['threads']} threads)"
          + (f", {env['gpu']}" if env.get("gpu") else "")
          + f"; torch {env['torch']}, onnxruntime {env['onnxruntime']}, openvino {env.get('openvino')}, "
            f"tensorrt {env['tensorrt']}")
    print("matmul peak: " + ", ".join(f"{k.replace('_gflops', '')} {v:,.0f} GFLOP/s" for k, v in peaks.items()))
    head = f"{'backend':<17}{'prec':<5}{'B':>3}{'n':>4}{'median ms':>11}{'p90':>9}{'p99':>9}{'samp/s':>8}" \
           f"{'speedup':>8}{'GFLOP/s':>9}{'%peak':>6}{'noise%':>7}{'RSS MiB':>8}{'PSNR':>7}{'max abs':>9}{'flips':>6}" \
           f"{'tails':>6}{'NaN':>4}"
    print(head)
    for r in results["results"]:
        if "error" in r:
            print(f"{r['backend']:<17}not run: {r['error']}")
            continue
        flag = ("  <-- NaN/Inf samples" if r["non_finite_samples"] else "  <-- disagrees with torch fp32") \
            if r.get("flagged") else ""
        precision = "tf32" if r["tf32"] and r["precision"] == "fp32" else r["precision"]
        print(f"{r['backend']:<17}{precision:<5}{r['batch']:>3}{r['n']:>4}{r['median_ms']:>11.1f}"
              f"{r['p90_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['samples_per_s']:>8.3f}{r.get('speedup', float('nan')):>8.2f}"
              f"{r['gflops']:>9.1f}{100 * r.get('peak_fraction', float('nan')):>5.0f}%{100 * r['noise_share']:>6.1f}%"
              f"{r['peak_rss_mib']:>8.0f}{r.get('psnr_db', float('nan')):>7.1f}"
              f"{r.get('max_abs_away_from_flips', float('nan')):>9.1e}{r.get('flipped_pixels', 0):>6}"
              f"{r.get('tail_pixels', 0):>6}"
              f"{r['non_finite_samples']:>4}{flag}")
