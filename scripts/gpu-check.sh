#!/usr/bin/env bash
# The GPU check, for a lent GPU machine where only files under $OUT come back (docs/guides/gpu.md).
# Uses $PYTHON (default python3) as it is: no virtual environment, no downloads. Each step has
# its own time cap (together under 8 minutes; torch.compile alone and last) and the script goes
# on after a failed step. Everything it makes is under ${OUT:-benchmarks/results/gpu}:
#   gpu-check.log      every step's full output, the machine first
#   pytest.xml         the GPU tests (CVDVAE_REQUIRE_GPU=1: a missing GPU or package fails them)
#   parity.json        benchmarks/gpu_parity.py: CUDA vs CPU, TF32, fp16, bf16, noise, CUDA graphs
#   bench.json         the benchmark, ffhq256-x8, n = 1 and 8: PyTorch CUDA fp32/fp16/bf16 (+ TensorRT,
#                      onnxruntime-cuda where present), written after each backend
#   bench-compile.json torch.compile at n = 1, last (a cold compile is the slowest step)
# Exit status: 0 every step passed; 1 a step failed (the last log line names them); 3 no CUDA GPU
# (the files are still written, each saying so).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
LOG="$OUT/gpu-check.log"
: > "$LOG"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
failed=()

step() {  # step NAME SECONDS COMMAND...: run with a cap, everything into the log
  local name=$1 cap=$2
  shift 2
  echo "=== $name (cap ${cap}s): $*" >> "$LOG"
  local start=$SECONDS
  timeout --kill-after=10 "$cap" "$@" >> "$LOG" 2>&1
  local status=$?
  echo "=== $name: exit $status after $((SECONDS - start)) s$([ $status -eq 124 ] && echo ' (cap reached)')" >> "$LOG"
  [ $status -eq 0 ] || failed+=("$name")
}

gpu=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>>"$LOG")
versions='import sys, torch; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda,
  "cudnn", torch.backends.cudnn.version())'
step machine 20 bash -c "nvidia-smi || true; \"$PY\" -c '$versions'"

markers="gpu" backends="torch,torch-fp16,torch-bf16"
if "$PY" -c "import tensorrt" 2>/dev/null; then
  markers="$markers or tensorrt" backends="$backends,tensorrt"
fi
ort_cuda="import sys, onnxruntime as o; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"
if "$PY" -c "$ort_cuda" 2>/dev/null; then
  markers="$markers or onnxruntime_cuda" backends="$backends,onnxruntime-cuda"
fi

if [ -z "$gpu" ]; then
  reason="no CUDA GPU visible to PyTorch"
  echo "gpu-check: $reason: the GPU steps are skipped; each file says so" | tee -a "$LOG" >&2
  for name in parity bench bench-compile; do
    printf '{"skipped": "%s"}\n' "$reason" > "$OUT/$name.json"
  done
  step tests 120 "$PY" -m pytest -q -p no:cacheprovider -o junit_family=xunit1 -m "$markers" \
    --junitxml="$OUT/pytest.xml" \
    tests/test_seeding.py tests/test_tf32.py tests/test_runtime.py tests/test_gpu_runtime.py
  echo "gpu-check: exit 3 ($reason)" | tee -a "$LOG" >&2
  exit 3
fi

echo "gpu-check on $gpu: tests marked '$markers'; benchmark rows $backends" | tee -a "$LOG"
export CVDVAE_REQUIRE_GPU=1
step tests 130 "$PY" -m pytest -q -p no:cacheprovider -o junit_family=xunit1 -m "$markers" \
  --junitxml="$OUT/pytest.xml" tests/test_seeding.py tests/test_tf32.py tests/test_runtime.py \
  tests/test_gpu_runtime.py tests/test_export.py
unset CVDVAE_REQUIRE_GPU
step parity 100 "$PY" benchmarks/gpu_parity.py --json "$OUT/parity.json"
step bench 150 "$PY" benchmarks/latency.py --preset ffhq256-x8 --n 1,8 --backends "$backends" --warmup 2 --iters 5 \
  --json "$OUT/bench.json"
step bench-compile 75 "$PY" benchmarks/latency.py --preset ffhq256-x8 --n 1 --backends torch,torch-compile \
  --warmup 1 --iters 3 --json "$OUT/bench-compile.json"

if [ ${#failed[@]} -eq 0 ]; then
  echo "gpu-check: every step passed" | tee -a "$LOG"
  exit 0
fi
echo "gpu-check: failed steps: ${failed[*]}" | tee -a "$LOG" >&2
exit 1
