"""How much memory MindSpore's CPU kernels keep per op: broadcasting binary ops against the alternatives.

    python bench/broadcast_workspace.py

Each case runs in its own process: a graph of four ops in a row on a 256 MB float32 output,
peak RSS above the process after its inputs are made, in units of one output. The finding
behind ``mindswin.models.layers.expand_to`` (docs/memory.md): a broadcasting Add/Mul keeps
about 4x its output for the life of the graph, one workspace per op; ``BroadcastTo`` and a
same-shape op keep none, and ``Tile`` (what the models use for the shifted blocks' bias + mask
on MindSpore's own ops) keeps what ``BroadcastTo`` keeps (the second column: the graph's second
run, four ops). Two more cases: a transpose keeps about twice its output, and a
broadcast of a *constant* is folded at compile time into a constant as large as the output,
kept for the life of the graph, unless the constant is first gated on a runtime value
(``ops.depend``), as the models do with the shifted-window mask.
"""
import json
import os
import resource
import subprocess
import sys
import time

# name: (first operand shape, second operand shape, op)
CASES = {
    "same-shape add": ((1024, 256, 256), (1024, 256, 256), "add"),
    "add, (256,) broadcast": ((1024, 256, 256), (256,), "add"),
    "mul, (1024, 1, 1) broadcast": ((1024, 256, 256), (1024, 1, 1), "mul"),
    "add, (1, 4, 256, 256) broadcast": ((256, 4, 256, 256), (1, 4, 256, 256), "add"),
    "add of broadcast_to(b)": ((1024, 256, 256), (256,), "expand_add"),
    "add of tile(b)": ((1024, 256, 256), (256,), "tile_add"),
    "add of broadcast_to(b), (1, 4, 256, 256)": ((256, 4, 256, 256), (1, 4, 256, 256), "expand_add"),
    "add of tile(b), (1, 4, 256, 256)": ((256, 4, 256, 256), (1, 4, 256, 256), "tile_add"),
    "BiasAdd": ((1024, 256, 256), (256,), "bias_add"),
    "transpose": ((16, 65536, 64), (1,), "transpose"),
    "add of broadcast_to(constant)": ((1024, 256, 256), (1024, 1, 256), "constant_add"),
    "add of broadcast_to(depend(constant, a))": ((1024, 256, 256), (1024, 1, 256), "gated_constant_add"),
}
OUTPUT_MB = 256.0


def worker(name: str) -> None:
    import mindspore as ms
    import numpy as np
    from mindspore import nn, ops

    ms.set_context(mode=ms.GRAPH_MODE)
    shape_a, shape_b, op = CASES[name]

    class FourOps(nn.Cell):
        def __init__(self):
            super().__init__()
            self.bias_add = ops.BiasAdd()
            # four distinct constants, so that folding cannot share one result
            self.constants = [ms.Tensor(np.full(shape_b, i + 1.0, np.float32)) for i in range(4)]

        def construct(self, a, b):
            for i in range(4):
                if op == "add":
                    a = a + b
                elif op == "mul":
                    a = a * b
                elif op == "expand_add":
                    a = a + ops.broadcast_to(b, a.shape)
                elif op == "tile_add":
                    a = a + ops.tile(b.reshape((1,) * (a.ndim - b.ndim) + b.shape),
                                     tuple(n // m for n, m in zip(a.shape, (1,) * (a.ndim - b.ndim) + b.shape)))
                elif op == "constant_add":
                    a = a + ops.broadcast_to(self.constants[i], a.shape)
                elif op == "gated_constant_add":
                    a = a + ops.broadcast_to(ops.depend(self.constants[i], a), a.shape)
                elif op == "bias_add":
                    a = self.bias_add(a.reshape(-1, a.shape[-1]), b).reshape(a.shape)
                else:
                    a = a.transpose(0, 2, 1)
                a = a * 1.0
            return a.sum()

    a = ms.Tensor(np.ones(shape_a, np.float32))
    b = ms.Tensor(np.ones(shape_b, np.float32))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    net = FourOps()
    net(a, b).asnumpy()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    net(a, b).asnumpy()
    seconds = time.perf_counter() - start
    print("BENCH " + json.dumps({"case": name, "outputs_kept": round((peak - base) / OUTPUT_MB, 2),
                                 "second_run_ms": round(seconds * 1000)}), flush=True)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
        return
    print("| four ops of a 256 MB output | peak above the inputs, in outputs | second run |\n|---|---|---|")
    for name in CASES:
        result = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", name], capture_output=True,
                                text=True, env=dict(os.environ, GLOG_v="3"))
        lines = [line for line in result.stdout.splitlines() if line.startswith("BENCH ")]
        row = json.loads(lines[-1][6:]) if lines else {"outputs_kept": "failed", "second_run_ms": "-"}
        print(f"| {name} | {row['outputs_kept']} | {row['second_run_ms']} ms |", flush=True)


if __name__ == "__main__":
    main()
