#!/usr/bin/env bash
# Build the PyTorch reference environment used by the parity tests and benchmarks:
# torch (CPU), timm (whose swinv2_* models match the official implementation bit for bit)
# and transformers (Hugging Face Swinv2), in a venv of its own.
#
# Usage: tests/reference/setup_torch_reference.sh [VENV_DIR]   (default: .venv-torchref)
# torchvision has no CPU build on these machines; timm only imports a few of its names
# (data utilities), so a stub package stands in for it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-.venv-torchref}"
check='import torchvision; torchvision.__version__ = "0.0.0"; import timm, torch, safetensors, transformers'
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" 2>/dev/null; then
  echo "torch reference ready in $venv"
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check torch==2.13.0 pyyaml safetensors huggingface_hub pillow \
  "numpy<2" transformers==5.23.0
# timm last, without its dependencies (torchvision is the stub below): an install after it
# would make pip's conflict check print an ERROR for timm's missing torchvision, and a
# --no-deps install skips that check.
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps timm==1.0.31
site="$("$venv/bin/python" -c "import site; print(site.getsitepackages()[0])")"
mkdir -p "$site/torchvision"
cp "$here/torchvision_stub.py" "$site/torchvision/__init__.py"
"$venv/bin/python" -c "$check; print('torch reference ready:', torch.__version__, 'timm', timm.__version__, 'transformers', transformers.__version__)"
