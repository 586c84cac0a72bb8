"""Evaluate a checkpoint: ``python validate.py --config X.yaml --data_dir DIR --ckpt_path CKPT``.

Also ``--model NAME`` without a config, ``--output results.json``, and under msrun with
``--distribute True`` (sharded, all-reduced, every sample counted once).
"""
import sys

from mindswin.cli import run_validate

if __name__ == "__main__":
    sys.exit(run_validate(sys.argv[1:]))
