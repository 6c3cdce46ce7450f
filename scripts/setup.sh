#!/usr/bin/env bash
# Create .venv and install cvdvae with every extra and the test dependencies (idempotent, offline-friendly).
# torch is installed first and pinned, so nothing later can pull a different (CUDA) build. pip's own
# output goes to .venv/setup.log, shown only when something fails.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${CVDVAE_TORCH_VERSION:-2.13.0}"
PY="${PYTHON:-python3}"
EXTRAS="cpu,export,dev,serve,cluster,docs"
stamp=.venv/.cvdvae-installed
want="torch=$TORCH_VERSION extras=$EXTRAS $(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up .venv: PyTorch $TORCH_VERSION (CPU build), then cvdvae[$EXTRAS] (a few minutes, once)" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
log=.venv/setup.log
install() {
  if ! .venv/bin/python -m pip install "$@" >> "$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "setup: pip install $* failed (the whole log: $log)" >&2
    exit 1
  fi
}
: > "$log"
install --upgrade pip
install "torch==$TORCH_VERSION"
install -e ".[$EXTRAS]"
echo "$want" > "$stamp"
echo "set up .venv" >&2
