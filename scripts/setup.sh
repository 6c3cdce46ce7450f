#!/usr/bin/env bash
# Create .venv and install cvdvae with its test dependencies (idempotent, offline-friendly).
# torch is installed first and pinned, so nothing later can pull a different (CUDA) build.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${CVDVAE_TORCH_VERSION:-2.13.0}"
PY="${PYTHON:-python3}"
stamp=.venv/.cvdvae-installed
want="torch=$TORCH_VERSION $(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==$TORCH_VERSION"
.venv/bin/python -m pip install --quiet -e ".[cpu,dev,serve,cluster]"
echo "$want" > "$stamp"
