#!/usr/bin/env bash
# Install what tests/test_web_page.py drives the web page with, when missing (idempotent, quiet):
# Debian's chromium and chromium-driver (apt, as root or through sudo) and selenium in .venv.
# Exits 1, saying what is missing, when it cannot install them; the test then skips.
set -euo pipefail
cd "$(dirname "$0")/.."
# 4.52.0 needs a certifi newer than the package index here has.
SELENIUM_VERSION="${CVDVAE_SELENIUM_VERSION:-4.51.0}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

fail() {
  cat "$log" >&2
  echo "scripts/browser.sh: $1" >&2
  exit 1
}

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt=(apt-get)
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    apt=(sudo apt-get)
  else
    fail "chromium or chromedriver is missing and installing them needs root (apt-get install chromium chromium-driver)"
  fi
  export DEBIAN_FRONTEND=noninteractive
  install=("${apt[@]}" install -y -qq --no-install-recommends chromium chromium-driver)
  # The package lists are refreshed only when they do not know the packages or are too old to
  # download them (a failed install).
  if ! apt-cache show chromium chromium-driver >/dev/null 2>&1 || ! "${install[@]}" >"$log" 2>&1; then
    "${apt[@]}" update -qq >"$log" 2>&1 || fail "apt-get update failed"
    "${install[@]}" >"$log" 2>&1 || fail "apt-get install chromium chromium-driver failed"
  fi
fi

[ -x .venv/bin/python ] || bash scripts/setup.sh
installed="$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("selenium"))' 2>/dev/null || true)"
if [ "$installed" != "$SELENIUM_VERSION" ]; then
  .venv/bin/python -m pip install --quiet "selenium==$SELENIUM_VERSION" >"$log" 2>&1 \
    || fail "pip install selenium==$SELENIUM_VERSION failed"
fi
