#!/usr/bin/env bash
# Quick start: install mindswin into .venv, write the built-in demo dataset, train a small
# Swin V2 on the CPU, evaluate the checkpoint with validate.py and predict a few images.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt -e .
py=.venv/bin/python
rm -rf demo_data demo_output
$py -m mindswin.data demo_data
$py train.py --config configs/demo/swinv2_micro_shapes_cpu.yaml --data_dir demo_data --ckpt_save_dir demo_output
ckpt=$(ls demo_output/swinv2_micro_window4_32-e*.ckpt | tail -n 1)
$py validate.py --data_dir demo_data --ckpt_path "$ckpt" --output demo_output/val_results.json
$py infer.py --ckpt_path "$ckpt" --topk 2 demo_data/val/checkerboard/00000.png demo_data/val/stripes_diagonal/00001.jpg \
  demo_data/val/stripes_horizontal/00002.png demo_data/val/stripes_vertical/00003.jpg
echo "demo done: checkpoints, metrics.jsonl and curves.png in demo_output/"
