#!/usr/bin/env bash
# Quick start, command 2: install into .venv/ (with the test extras and, where this
# user may, Debian's chromium for the browser tests) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh "all,test"
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[test] installing Debian chromium + chromium-driver for the browser tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "[test] could not install chromium: browser tests will skip"
  else
    echo "[test] chromium not found and not root: browser tests will skip"
  fi
fi
exec .venv/bin/python -m pytest "$@"
