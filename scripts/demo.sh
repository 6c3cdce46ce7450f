#!/usr/bin/env bash
# The demo: diverse 4x super-resolutions of one LR image (sets up .venv first).
# Uses the built-in untrained tiny-x4 model; docs/getting-started/first-model.md for real weights.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cvdvae demo "$@"
