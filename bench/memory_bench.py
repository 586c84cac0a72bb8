"""Peak memory and time of one training step at high resolution: mindswin against timm, one run.

    python bench/memory_bench.py [--sizes 512:16 1024:32 1536:32] [--isas native avx2]

Swin V2-T (C=96, depths 2-2-6-2), batch 1, AdamW, float32, activation checkpointing on in both
(``recompute=True`` in mindswin, ``set_grad_checkpointing(True)`` in timm). Each configuration
runs in its own process (``--worker``), so its peak RSS (``ru_maxrss``) is its own; a
configuration that the kernel's OOM killer stops is reported as such. mindswin runs as it does
by default (sequential: the fused CPU attention kernel, see ``VARIANTS``), with one matmul for
every window's logits (unchunked) and with the sequential core's groups (MindSpore's ops), so the
table gives the memory ratio against timm and the time ratio of sequential over unchunked.

Writes docs/memory_bench.json and docs/memory_bench.md. One mindswin configuration with other
model arguments: ``MEMORY_BENCH_EXTRA='{"recompute": false, "depths": [4, 2, 6, 2]}' python
bench/memory_bench.py --worker mindswin --size 512 --window 16`` (also ``"cpu_kernels": false``,
``"memory_optimize_level": "O1"``, ``"batch_size": 4``, ``"amp_level": "O2"``, ``"row_block_attention": false``).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from bench.run_bench import ISA_ENV  # noqa: E402
from bench.workers import mindspore_train_step, peak_rss_mb  # noqa: E402

TINY = dict(patch_size=4, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), num_classes=1000)
# name: (implementation, mindswin keywords): what each row of the table runs.
# On CPU in float32, windows of 144 tokens or more attend in the fused kernel 64 query rows at a
# time, one (window, head) pair per thread: sequential attention, and mindswin's default there.
# "unchunked" turns that kernel off (one matmul for every window's logits, as before it), and
# "seq-core" the sequential core's groups of windows, as MindSpore's own ops (Ascend) run them.
VARIANTS = {
    "timm": ("timm", {}),
    "mindswin-unchunked": ("mindswin", {"recompute": True, "row_block_attention": False}),
    "mindswin": ("mindswin", {"recompute": True}),
    "mindswin-seq-core": ("mindswin", {"recompute": True, "sequential_attention": 16, "row_block_attention": False}),
}


def mindswin_step(size: int, window: int, extra: dict):
    import mindspore as ms
    import numpy as np
    from mindspore import nn

    import mindswin
    from mindswin.amp import apply_amp
    from mindswin.models import attention_paths
    from mindswin.models.kernel_library import cpu_kernels
    from mindswin.models.threads import set_cpu_threads

    extra = dict(extra)
    batch_size, amp_level = extra.pop("batch_size", 1), extra.pop("amp_level", "O0")
    if not extra.pop("row_block_attention", True):
        attention_paths.ROW_BLOCK_ATTENTION_MIN_TOKENS = 1 << 30  # read when each WindowAttention is built
    ms.set_context(mode=ms.GRAPH_MODE, memory_optimize_level=extra.pop("memory_optimize_level", "O0"))
    ms.set_device("CPU")
    set_cpu_threads()
    with cpu_kernels(extra.pop("cpu_kernels", True)):
        model = mindswin.create_model("swinv2_tiny_window8_256", img_size=size, window_size=window,
                                      pretrained_window_sizes=[0] * 4, drop_path_rate=0.0, **{**TINY, **extra})
    apply_amp(model, amp_level)
    model.set_train(True)
    optimizer = nn.AdamWeightDecay(model.trainable_params(), learning_rate=1e-4, weight_decay=0.05)

    step = mindspore_train_step(model, optimizer)
    images = ms.Tensor(np.random.default_rng(0).standard_normal((batch_size, 3, size, size)).astype(np.float32))
    labels = ms.Tensor(np.ones(batch_size, np.int32))
    return lambda: step(images, labels).asnumpy()


def timm_step(size: int, window: int):
    import torch
    import torchvision

    torchvision.__version__ = "0.0.0"
    from timm.models.swin_transformer_v2 import SwinTransformerV2

    torch.manual_seed(0)
    model = SwinTransformerV2(img_size=size, window_size=window, drop_path_rate=0.0, **TINY)
    model.set_grad_checkpointing(True)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    images, labels = torch.randn(1, 3, size, size), torch.tensor([1])

    def step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step


def worker(variant: str, size: int, window: int) -> None:
    impl, extra = VARIANTS[variant]
    extra = {**extra, **json.loads(os.environ.get("MEMORY_BENCH_EXTRA", "{}"))}
    step = timm_step(size, window) if impl == "timm" else mindswin_step(size, window, extra)
    result = {"built_mb": peak_rss_mb()}
    start = time.perf_counter()
    step()
    result["first_step_s"] = time.perf_counter() - start
    start = time.perf_counter()
    step()
    result["step_s"] = time.perf_counter() - start
    result["peak_rss_mb"] = peak_rss_mb()
    print("BENCH " + json.dumps(result), flush=True)


def run_worker(python: str, variant: str, size: int, window: int, isa: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ISA_ENV["avx2"]}
    env.update(ISA_ENV[isa], GLOG_v="3")
    command = [python, os.path.abspath(__file__), "--worker", variant, "--size", str(size), "--window", str(window)]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    row = {"variant": variant, "size": size, "window": window, "isa": isa}
    lines = [line for line in result.stdout.splitlines() if line.startswith("BENCH ")]
    if lines:
        return {**row, **json.loads(lines[-1][len("BENCH "):])}
    return {**row, "error": failure(result)}


def failure(result: subprocess.CompletedProcess) -> str:
    """One line on why a worker gave no figures: out of memory (either way it shows), or its last error line."""
    output = result.stderr or result.stdout
    if result.returncode in (-9, 137):
        return "killed by the OOM killer"
    if "alloc size" in output or "Memory not enough" in output or "out of memory" in output.lower():
        return "out of memory (MindSpore's allocator refused)"
    lines = [line for line in output.splitlines() if "Error" in line] or output.splitlines()[-1:]
    return lines[-1][:120] if lines else f"exit status {result.returncode}"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def markdown(rows, args) -> str:
    def cell(row, key, fmt):
        return "-" if row is None or key not in row else fmt.format(row[key])

    lines = ["# Memory benchmark: one training step at high resolution", "",
             f"`python bench/memory_bench.py` on {cpu_name()}, "
             f"{os.cpu_count()} cores. Swin V2-T, batch 1, AdamW, float32, activation checkpointing on in both; "
             "peak RSS of the whole process (framework and graph compiler included). mindswin: its default, "
             "the fused CPU attention kernel, 64 query rows and one (window, head) pair at a time (sequential "
             "attention); unchunked: one matmul for every window's logits; seq-core: the sequential core, "
             f"`sequential_attention` {VARIANTS['mindswin-seq-core'][1]['sequential_attention']} windows per group on "
             "MindSpore's ops. Step time: the second step (the first includes graph compilation).", "",
             "| ISA | size / window | timm peak MB | unchunked peak MB | mindswin peak MB | seq-core peak MB "
             "| mindswin / timm | timm step s | unchunked step s | mindswin step s | seq-core step s "
             "| mindswin / unchunked time |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for isa in args.isas:
        for size, window in args.sizes:
            found = {r["variant"]: r for r in rows if (r["isa"], r["size"], r["window"]) == (isa, size, window)}
            timm, unchunked, default, core = (found.get(v) for v in VARIANTS)

            def ratio(a, b, key):
                return "-" if not a or not b or key not in a or key not in b else f"{a[key] / b[key]:.2f}"

            def peak(row):
                return row.get("error", "-") if row and "error" in row else cell(row, "peak_rss_mb", "{:.0f}")

            def step(row):
                return cell(row, "step_s", "{:.2f}")

            lines.append(f"| {isa} | {size} / {window} | {peak(timm)} | {peak(unchunked)} | {peak(default)} "
                         f"| {peak(core)} | {ratio(default, timm, 'peak_rss_mb')} | {step(timm)} | {step(unchunked)} "
                         f"| {step(default)} | {step(core)} | {ratio(default, unchunked, 'step_s')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["1024:32", "1536:32"],
                        help="image size:window pairs (default: 1024:32 1536:32)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=tuple(VARIANTS))
    parser.add_argument("--isas", nargs="+", default=["native"], choices=tuple(ISA_ENV))
    parser.add_argument("--torch_python", default=os.path.join(ROOT, ".venv-torchref", "bin", "python"))
    parser.add_argument("--out", default=os.path.join(ROOT, "docs"))
    parser.add_argument("--worker", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--window", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.size, args.window)
        return
    args.sizes = [tuple(int(v) for v in pair.split(":")) for pair in args.sizes]
    rows = []
    for isa in args.isas:
        for size, window in args.sizes:
            for variant in args.variants:
                python = args.torch_python if VARIANTS[variant][0] == "timm" else sys.executable
                rows.append(run_worker(python, variant, size, window, isa))
                print(json.dumps(rows[-1]), flush=True)
    with open(os.path.join(args.out, "memory_bench.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(args.out, "memory_bench.md"), "w") as f:
        f.write(markdown(rows, args))


if __name__ == "__main__":
    main()
