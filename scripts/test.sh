#!/usr/bin/env bash
# Install mindswin with its test extras (MindSpore venv + PyTorch/timm/transformers reference venv),
# lint, and run one tier of the test suite.
#
# Usage: bash scripts/test.sh [--tier fast|slow|all] [pytest arguments, e.g. tests/test_config.py or -k name]
#   fast (default, the README's test command): every test not marked slow or distributed;
#   slow: msrun launches, runs killed and resumed, multi-epoch training, full-size parity;
#   all:  both. .ci/run runs fast, then slow: both gate landing.
# A tier is a marker expression, so `--tier all tests/test_train.py` runs one whole file.
set -euo pipefail
cd "$(dirname "$0")/.."
tier=fast
if [ "${1:-}" = "--tier" ]; then
  tier="${2:?--tier needs fast, slow or all}"
  shift 2
fi
# fast: the workers take tests one by one (the expensive fixtures are built once for all, tests/helpers.py
# built_once); slow: a whole file per worker, so a module's msrun launches serve all its tests (the msrun tests
# are split into files by the launches they share; xdist_group marks do not group under pytest 9, whose
# nodeids pytest-xdist 3.8 can no longer suffix).
case "$tier" in
  fast) select=(-m "not slow and not distributed") dist=load ;;
  slow) select=(-m "slow or distributed") dist=loadfile ;;
  all) select=() dist=loadfile ;;
  *) echo "error: --tier must be fast, slow or all, got '$tier'" >&2; exit 2 ;;
esac
[ -x .venv/bin/python ] || python3 -m venv .venv
# the two venvs install side by side (downloads and unpacking overlap); each one's output stays whole
bash tests/reference/setup_torch_reference.sh .venv-torchref > .venv-torchref.log 2>&1 &
reference=$!
.venv/bin/pip install -q --disable-pip-version-check -r requirements-test.txt -e .
if ! wait "$reference"; then
  cat .venv-torchref.log >&2
  echo "error: the torch reference venv did not build (tests/reference/setup_torch_reference.sh)" >&2
  exit 1
fi
cat .venv-torchref.log
bash scripts/lint.sh
# One pytest-xdist worker per core: MindSpore runs a test process, and each run a test starts, on half
# the cores (mindswin.models.threads), so one process at a time left a core idle.
# MINDSWIN_TEST_WORKERS=0 runs everything in this process.
workers="${MINDSWIN_TEST_WORKERS:-$(nproc)}"
[ "$workers" -gt 1 ] || workers=0
# -v names each test as it ends; --durations and the per-file table at the end (tests/conftest.py)
# show where the time went.
status=0
MINDSWIN_REQUIRE_REFERENCE=1 GLOG_v=3 .venv/bin/python -m pytest -v -n "$workers" --dist "$dist" --durations=30 \
  "${select[@]}" "$@" || status=$?
# 5: no test selected (e.g. a file with no test of this tier), not a failure
[ "$status" -eq 5 ] && exit 0
exit "$status"
