#!/usr/bin/env bash
# Install mindswin with its test extras (MindSpore venv + PyTorch/timm/transformers reference
# venv), lint, and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements-test.txt -e .
bash tests/reference/setup_torch_reference.sh .venv-torchref
bash scripts/lint.sh
# -v names each test as it starts: the msrun and parity tests take minutes each.
MINDSWIN_REQUIRE_REFERENCE=1 GLOG_v=3 .venv/bin/python -m pytest -v "$@"
