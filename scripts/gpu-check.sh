#!/usr/bin/env bash
# The GPU check: run on a machine with a CUDA build of PyTorch (about 5-10 minutes on one GPU).
#   1. the GPU tests, with CVDVAE_REQUIRE_GPU=1 so a missing GPU or package fails instead of skipping:
#      CUDA-vs-numpy noise parity and TF32 off always; TensorRT engines (fp32/fp16/bf16 builds and
#      their checks, the runtime with CUDA-graph replays) where TensorRT imports; ONNX Runtime CUDA
#      parity where onnxruntime-gpu has its CUDA provider;
#   2. the benchmark on ffhq256-x8 (seeded random weights) at n=1 and n=8, TF32 off: PyTorch CUDA
#      fp32/fp16/bf16/compile, plus onnxruntime-cuda and tensorrt where present, written to
#      benchmarks/results/gpu-<gpu>-x8.json.
# Uses $PYTHON (default python3) as it is: no virtual environment, no downloads.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" CVDVAE_REQUIRE_GPU=1 PYTHONUNBUFFERED=1

gpu=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>/dev/null)
if [ -z "$gpu" ]; then
  echo "gpu-check: no CUDA GPU visible to PyTorch ($("$PY" -c 'import torch; print(torch.__version__)' 2>&1 | tail -1)); run it on a machine with a CUDA build of PyTorch" >&2
  exit 1
fi
markers="gpu" backends="torch,torch-fp16,torch-bf16,torch-compile"
if "$PY" -c "import tensorrt" 2>/dev/null; then
  markers="$markers or tensorrt" backends="$backends,tensorrt"
fi
if "$PY" -c "import sys, onnxruntime as o; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null; then
  markers="$markers or onnxruntime_cuda" backends="$backends,onnxruntime-cuda"
fi
slug=$(echo "$gpu" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/-*$//')
out="benchmarks/results/gpu-$slug-x8.json"
echo "gpu-check on $gpu: tests marked '$markers'; benchmark rows $backends -> $out"

"$PY" -m pytest -q -p no:cacheprovider -m "$markers" tests/test_seeding.py tests/test_tf32.py \
  tests/test_runtime.py tests/test_export.py
tests=$?
timeout 480 "$PY" benchmarks/latency.py --preset ffhq256-x8 --n 1,8 --backends "$backends" --warmup 2 --iters 5 \
  --json "$out"
bench=$?
echo "gpu-check: tests exit $tests, benchmark exit $bench"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
