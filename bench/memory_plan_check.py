"""The memory plan against measured peaks: one training step per configuration, each in its own process.

    python bench/memory_plan_check.py              # measure every configuration, then compare
    python bench/memory_plan_check.py --reuse      # compare with the measurements already in docs/

Each configuration is one AdamW step of a Swin V2 model on this machine's CPU backend (fused
CPU kernels on), run by ``bench/memory_bench.py``'s worker; its peak RSS is compared with
``mindswin.memory_plan.plan_memory(..., backend="cpu")``. The first configuration calibrates
the plan's CPU runtime (framework, the graph outside the blocks, allocator pools); every other
configuration is a prediction (the plan's per-block graph constants were measured separately, at
128 px: ``mindswin.memory_plan.CPU_GRAPH_PER_BLOCK``). Writes docs/memory_plan_check.json and .md.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from bench.memory_bench import TINY, cpu_name, run_worker  # noqa: E402

SMALL_DEPTHS = [2, 2, 18, 2]
# (label, size, window, worker keywords): model arguments plus batch_size / amp_level.
CONFIGS = [
    ("calibration: T 128/4, batch 1", 128, 4, {"recompute": False}),
    ("T 256/8, batch 8", 256, 8, {"recompute": False, "batch_size": 8}),
    ("T 256/8, batch 4, AMP O2", 256, 8, {"recompute": False, "batch_size": 4, "amp_level": "O2"}),
    ("T 384/24, batch 2", 384, 24, {"recompute": False, "batch_size": 2}),
    ("T 512/16, batch 1", 512, 16, {"recompute": False}),
    ("T 512/16, batch 2, sequential 16", 512, 16, {"recompute": False, "batch_size": 2, "sequential_attention": 16}),
    ("S 512/16, batch 1", 512, 16, {"recompute": False, "depths": SMALL_DEPTHS}),
    ("T 768/24, batch 1, recompute", 768, 24, {"recompute": True}),
    ("T 512/32, batch 1", 512, 32, {"recompute": False}),
    ("T 1024/16, batch 1", 1024, 16, {"recompute": False}),
    ("T 1024/32, batch 1, sequential 16", 1024, 32, {"recompute": False, "sequential_attention": 16}),
    ("T 1024/32, batch 1", 1024, 32, {"recompute": False}),
    ("T 512/16, batch 1, recompute", 512, 16, {"recompute": True}),
    ("T 1024/32, batch 1, recompute", 1024, 32, {"recompute": True}),
    ("T 1024/32, batch 1, sequential 16, recompute", 1024, 32, {"recompute": True, "sequential_attention": 16}),
]


def planned(size: int, window: int, keywords: dict):
    from mindswin.memory_plan import plan_memory

    keywords = dict(keywords)
    batch_size, amp_level = keywords.pop("batch_size", 1), keywords.pop("amp_level", "O0")
    recompute = keywords.pop("recompute", False)
    model_args = {**TINY, **keywords, "img_size": size, "window_size": window}
    return plan_memory(model_args, batch_size=batch_size, amp_level=amp_level, recompute=recompute,
                       backend="cpu", runtime_bytes=0)


def measure(python: str) -> list:
    rows = []
    for label, size, window, keywords in CONFIGS:
        os.environ["MEMORY_BENCH_EXTRA"] = json.dumps(keywords)
        row = run_worker(python, "mindswin", size, window, "native")
        rows.append({**row, "label": label, "keywords": keywords})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def compare(rows: list) -> list:
    """Each row with its prediction; the first row's measured peak minus its plan is the CPU runtime."""
    mib = 2 ** 20
    runtime_mb = rows[0]["peak_rss_mb"] - planned(rows[0]["size"], rows[0]["window"], rows[0]["keywords"]).total / mib
    out = []
    for row in rows:
        plan = planned(row["size"], row["window"], row["keywords"])
        predicted = plan.total / mib + runtime_mb
        entry = {**row, "runtime_mb": runtime_mb, "predicted_mb": predicted,
                 "breakdown_mb": {k: v / mib for k, v in plan.breakdown().items()}}
        if "peak_rss_mb" in row:
            entry["relative_error"] = predicted / row["peak_rss_mb"] - 1.0
        out.append(entry)
    return out


def markdown(rows: list) -> str:
    lines = ["# Memory plan against measured peaks (CPU backend)", "",
             f"`python bench/memory_plan_check.py` on {cpu_name()}, {os.cpu_count()} cores, MindSpore CPU backend, "
             "fused CPU kernels on, one AdamW step, peak RSS of the worker process. Predicted: "
             "`mindswin.memory_plan.plan_memory(..., backend=\"cpu\")` plus the CPU runtime "
             f"({rows[0]['runtime_mb']:.0f} MB, calibrated on the first row).", "",
             "| configuration | weights + grads + moments MB | activations MB | attention MB | backward transient MB "
             "| graph MB | predicted MB | measured MB | error |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        b = row["breakdown_mb"]
        state = b["weights"] + b["gradients"] + b["optimizer"] + b["ema"]
        measured = f"{row['peak_rss_mb']:.0f}" if "peak_rss_mb" in row else row.get("error", "-")
        error = f"{row['relative_error']:+.1%}" if "relative_error" in row else "-"
        lines.append(f"| {row['label']} | {state:.0f} | {b['activations']:.0f} | {b['attention']:.0f} "
                     f"| {b['transient']:.0f} | {b['graph']:.0f} | {row['predicted_mb']:.0f} | {measured} | {error} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reuse", action="store_true", help="compare with docs/memory_plan_check.json's measurements")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs"))
    args = parser.parse_args()
    path = os.path.join(args.out, "memory_plan_check.json")
    if args.reuse:
        with open(path) as f:
            derived = ("predicted_mb", "relative_error", "breakdown_mb", "runtime_mb")
            rows = [{k: v for k, v in row.items() if k not in derived} for row in json.load(f)]
    else:
        rows = measure(sys.executable)
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)
    rows = compare(rows)
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(args.out, "memory_plan_check.md"), "w") as f:
        f.write(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
