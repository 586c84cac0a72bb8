#!/usr/bin/env bash
# Lint only, in seconds: ruff at the version the test extras pin, from .venv when scripts/test.sh
# has built it, else from a small venv of its own (no MindSpore or torch install needed).
# Extra arguments go to ruff check (e.g. --fix).
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^ruff==//p' requirements-test.txt)
ruff=.venv/bin/ruff
if ! "$ruff" --version 2>/dev/null | grep -q "$version"; then
  ruff=.venv-lint/bin/ruff
  if ! "$ruff" --version 2>/dev/null | grep -q "$version"; then
    [ -x .venv-lint/bin/python ] || python3 -m venv .venv-lint
    .venv-lint/bin/pip install -q --disable-pip-version-check "ruff==$version"
  fi
fi
"$ruff" check "$@" mindswin tests tools bench ./*.py
