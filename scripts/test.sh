#!/usr/bin/env bash
# Quick start, command 2: install into .venv/ (with the test extras and, where this
# user may, Debian's chromium for the browser tests and openssh-server + rsync for
# the cluster-launcher test) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh "all,test"
# Debian packages some tests need, installed where this user may (root, apt-get);
# without them those tests skip and say why
need=() why=""
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  need+=(chromium chromium-driver) why="browser tests"
fi
if [ ! -x /usr/sbin/sshd ] || ! command -v rsync >/dev/null; then
  need+=(openssh-server rsync) why="${why:+$why and the }cluster-launcher test"  # tests/test_launcher.py
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[test] installing Debian ${need[*]} for the $why"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null) \
      || echo "[test] could not install ${need[*]}: the $why will skip"
  else
    echo "[test] ${need[*]} not found and not root: the $why will skip"
  fi
fi
exec .venv/bin/python -m pytest "$@"
