"""What a library user gets without tuning anything: inference speed of Swin V2-T through
``mindswin.create_model`` in a plain script (no thread settings), beside timm on PyTorch with
its defaults, measured in one run, each in its own process.

Usage: python bench/library_defaults.py [--batch 8] [--size 256] [--iters 10] [--json]
Prints one line per implementation and the ratio; ``--json`` prints one JSON line instead.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MINDSWIN = r"""
import json, sys, time
import mindspore as ms, numpy as np
import mindswin
ms.set_context(mode=ms.GRAPH_MODE)
batch, size, iters = map(int, sys.argv[1:4])
model = mindswin.create_model("swinv2_tiny_window8_256", img_size=size)
x = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32))
model(x).asnumpy()
times = []
for _ in range(iters):
    start = time.perf_counter(); model(x).asnumpy(); times.append(time.perf_counter() - start)
print(json.dumps({"img_per_s": batch / sorted(times)[len(times) // 2]}))
"""

TIMM = r"""
import json, sys, time
import torch, timm
batch, size, iters = map(int, sys.argv[1:4])
model = timm.create_model("swinv2_tiny_window8_256", img_size=size).eval()
x = torch.randn(batch, 3, size, size)
times = []
with torch.inference_mode():
    model(x)
    for _ in range(iters):
        start = time.perf_counter(); model(x); times.append(time.perf_counter() - start)
print(json.dumps({"img_per_s": batch / sorted(times)[len(times) // 2], "threads": torch.get_num_threads()}))
"""


def _measure(python: str, code: str, args: argparse.Namespace) -> dict:
    script = Path("/tmp") / f"mindswin_bench_{os.getpid()}_{abs(hash(code))}.py"
    script.write_text(code)  # graph mode cannot compile code given with -c
    env = {k: v for k, v in os.environ.items() if k != "MINDSWIN_CPU_THREADS"}
    env.setdefault("GLOG_v", "3")
    try:
        out = subprocess.run([python, str(script), str(args.batch), str(args.size), str(args.iters)], check=True,
                             capture_output=True, text=True, env=env, cwd=str(ROOT)).stdout
    finally:
        script.unlink()
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--torch_python", default=str(ROOT / ".venv-torchref" / "bin" / "python"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = {"mindswin": _measure(sys.executable, MINDSWIN, args), "timm": _measure(args.torch_python, TIMM, args)}
    result["ratio"] = result["mindswin"]["img_per_s"] / result["timm"]["img_per_s"]
    if args.json:
        print(json.dumps(result))
        return
    for name in ("mindswin", "timm"):
        print(f"{name:9s} {result[name]['img_per_s']:.2f} img/s")
    print(f"mindswin / timm inference, library defaults: {result['ratio']:.2f}")


if __name__ == "__main__":
    main()
