"""Training input-pipeline throughput: mindswin's pipeline next to mindcv's, same policy, same images.

    python bench/make_imagenet_like.py /tmp/inet --images 2000
    python bench/data_bench.py --data_dir /tmp/inet --workers 2 --json             # mindswin
    python bench/data_bench.py --data_dir /tmp/inet --workers 2 --pipeline mindcv --json
    python bench/data_bench.py --data_dir /tmp/inet --workers 2 --pipeline both --json   # + ratio
    python bench/data_bench.py --data_dir /tmp/inet --workers 1 2 --pipeline both --markdown docs/data_bench.md

The measured pipeline is the official Swin V2 train transform on ``DATA_DIR/train``:
decode, RandomResizedCrop 256 bicubic (scale .08-1), horizontal flip, RandAugment
rand-m9-mstd0.5-inc1, normalise, random erasing 0.25 (per-pixel noise), mixup 0.8 /
CutMix 1.0 with label smoothing 0.1, batch 128, drop remainder.

* ``mindswin``: :func:`mindswin.data.create_train_dataset` as the classification task
  builds it. Where the dataset supports it (``device_augment``), the host delivers uint8
  images plus the per-batch erasing/mixing parameters and the normalise/erase/mix arithmetic
  runs in the graph on the device: that part is not in the host figure (it is a few
  element-wise ops on the accelerator).
* ``mindcv``: mindcv's own ``create_dataset`` / ``create_transforms`` /
  ``create_loader`` with the same policy (``randaug-m9-mstd0.5-inc1``, ``re_prob`` 0.25,
  bicubic, mixup 0.8, cutmix 1.0 with ``cutmix_prob`` 1.0, else mindcv never mixes) and
  ``python_multiprocessing`` on (``--mindcv_threads`` measures it with threads). mindcv
  erases with a constant, not per-pixel noise, and normalises and mixes on the host.

Each run times ``--batches`` batches from the creation of the iterator (start-up
included: see :func:`measure`). ``img_per_cpu_s`` divides the images by the CPU time
(user + system) that the process and its worker processes spent meanwhile: the throughput
of one fully used core, whatever the number of workers, and the figure to size hosts by.
``main_process_cpu_share`` is the part of that CPU time spent in the main process, which
more workers do not divide: the serial fraction of docs/data_bench.md's scaling model.
Prints one JSON line per measurement (``--json``) with img_per_s,
img_per_s_per_core (divided by min(workers, cores): the cores the workers can use).
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

POLICY = "rand-m9-mstd0.5-inc1"


def cpu_description() -> str:
    name = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        for line in text.splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
        name += ", AVX-512" if " avx512f" in text else ", AVX2 (no AVX-512)" if " avx2" in text else ""
    except OSError:
        pass
    return name


def num_classes(data_dir: str) -> int:
    split = os.path.join(data_dir, "train")
    return len([d for d in os.listdir(split) if os.path.isdir(os.path.join(split, d))])


def mindswin_pipeline(data_dir: str, workers: int, batch: int, seed: int):
    from mindswin.data import Mixup, create_train_dataset
    from mindswin.data.dataset import scan_data_split
    from mindswin.data.transforms import TrainAugment

    index = scan_data_split(data_dir, "train", num_workers=workers)
    augment = TrainAugment(256, auto_augment=POLICY, re_prob=0.25, interpolation="bicubic", seed=seed, device=True)
    mixer = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=len(index.class_names))
    dataset, _ = create_train_dataset(index, augment, mixer, batch, seed=seed, num_workers=workers)
    return dataset


def mindcv_pipeline(data_dir: str, workers: int, batch: int, seed: int, multiprocessing: bool = True):
    import mindspore.dataset as ds
    from mindcv.data import create_dataset, create_loader, create_transforms

    ds.config.set_seed(seed)
    dataset = create_dataset(name="", root=data_dir, split="train", shuffle=True, num_parallel_workers=workers)
    transform = create_transforms(dataset_name="", image_resize=256, is_training=True,
                                  auto_augment="randaug-m9-mstd0.5-inc1", re_prob=0.25, interpolation="bicubic")
    return create_loader(dataset, batch_size=batch, drop_remainder=True, is_training=True, mixup=0.8, cutmix=1.0,
                         cutmix_prob=1.0, num_classes=num_classes(data_dir), transform=transform,
                         num_parallel_workers=workers, python_multiprocessing=multiprocessing)


def cpu_seconds() -> tuple:
    """User + system CPU time of this process, and of its live descendants (the pipeline's workers)."""
    import psutil

    def used(proc) -> float:
        try:
            times = proc.cpu_times()
            return times.user + times.system
        except psutil.Error:
            return 0.0

    me = psutil.Process()
    return used(me), sum(used(child) for child in me.children(recursive=True))


def measure(dataset, batch: int, warmup: int, batches: int) -> dict:
    """Images per second over ``batches`` batches, clock started when the iterator is created.

    Start-up (worker launch, first batch) is included on purpose: a pipeline runs ahead of
    the consumer while the first batch is assembled, so a clock started after a warm-up
    batch credits it with images made before the clock started. ``steady_img_per_s`` is the
    rate after ``warmup`` batches, for reference only.
    """
    cpu_start = cpu_seconds()
    start = time.perf_counter()
    iterator = dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)
    count, first, steady_start = 0, None, None
    for i in range(batches):
        next(iterator)
        count += batch
        if i == 0:
            first = time.perf_counter() - start
        if i + 1 == warmup:
            steady_start = time.perf_counter()
    end = time.perf_counter()
    main_cpu, worker_cpu = (now - then for now, then in zip(cpu_seconds(), cpu_start))
    cpu = main_cpu + worker_cpu
    del iterator
    steady = (count - warmup * batch) / (end - steady_start) if steady_start and batches > warmup else None
    return dict(img_per_s=round(count / (end - start), 1), images=count, seconds=round(end - start, 2),
                cpu_seconds=round(cpu, 2), img_per_cpu_s=round(count / cpu, 1),
                main_process_cpu_seconds=round(main_cpu, 2), main_process_cpu_share=round(main_cpu / cpu, 3),
                first_batch_seconds=round(first, 2), steady_img_per_s=round(steady, 1) if steady else None)


def run_one(pipeline: str, args, workers: int) -> dict:
    if pipeline == "mindswin":
        dataset = mindswin_pipeline(args.data_dir, workers, args.batch, args.seed)
    else:
        dataset = mindcv_pipeline(args.data_dir, workers, args.batch, args.seed, not args.mindcv_threads)
    result = measure(dataset, args.batch, args.warmup, args.batches)
    cores = min(workers, os.cpu_count() or 1)
    result = dict(pipeline=pipeline, workers=workers, batch=args.batch, cores=os.cpu_count(), **result,
                  img_per_s_per_core=round(result["img_per_s"] / cores, 1),
                  loadavg=round(os.getloadavg()[0], 2), cpu=cpu_description())
    if pipeline == "mindcv":
        result["python_multiprocessing"] = not args.mindcv_threads
    return result


def run_isolated(pipeline: str, args, workers: int) -> dict:
    """One measurement in a fresh interpreter: no pipeline's worker pool or memory left from another."""
    cmd = [sys.executable, os.path.abspath(__file__), "--data_dir", args.data_dir, "--workers", str(workers),
           "--pipeline", pipeline, "--batch", str(args.batch), "--warmup", str(args.warmup), "--batches",
           str(args.batches), "--seed", str(args.seed), "--json", "--in_process"]
    if args.mindcv_threads:
        cmd.append("--mindcv_threads")
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def write_markdown(path: str, rows, args) -> None:
    lines = ["# Training input pipeline: mindswin vs mindcv", "",
             f"Generated by `python bench/data_bench.py --data_dir DIR --workers "
             f"{' '.join(str(w) for w in args.workers)} --pipeline both --markdown {os.path.relpath(path, ROOT)}` "
             f"on {time.strftime('%Y-%m-%d')}: {rows[0]['cpu']}, {os.cpu_count()} cores. Images: "
             "`python bench/make_imagenet_like.py DIR --images 2000` (500x375 JPEG, quality 90). Policy: "
             "RandomResizedCrop 256 bicubic, flip, rand-m9-mstd0.5-inc1, random erasing 0.25, mixup 0.8 / "
             f"CutMix 1.0, label smoothing 0.1, batch {args.batch}; {args.batches} batches timed from the "
             "creation of the iterator (start-up included).", "",
             "| pipeline | workers | img/s | img per CPU-second | CPU s | load avg at end |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pipeline']} | {r['workers']} | {r['img_per_s']} | {r['img_per_cpu_s']} | "
                     f"{r['cpu_seconds']} | {r['loadavg']} |")
    by = {(r["pipeline"], r["workers"]): r["img_per_s"] for r in rows}
    notes = []
    for w in args.workers:
        if ("mindswin", w) in by and ("mindcv", w) in by:
            notes.append(f"- {w} worker(s): mindswin / mindcv = {by[('mindswin', w)] / by[('mindcv', w)]:.2f}x")
    if ("mindswin", 1) in by and ("mindswin", 2) in by:
        notes.append(f"- mindswin scaling 1 -> 2 workers: {by[('mindswin', 2)] / by[('mindswin', 1)]:.2f}x")
    if ("mindcv", 1) in by and ("mindcv", 2) in by:
        notes.append(f"- mindcv scaling 1 -> 2 workers: {by[('mindcv', 2)] / by[('mindcv', 1)]:.2f}x")
    lines += [""] + notes + ["", "mindswin's figure is the host side of its pipeline: it sends uint8 images and "
                             "per-batch erasing/mixing parameters, and normalises, erases and mixes in the graph on "
                             "the device (see docs/performance.md). mindcv normalises, erases (constant fill) and "
                             "mixes on the host."]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="folder with train/<class>/<image> (make_imagenet_like.py)")
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--pipeline", choices=["mindswin", "mindcv", "both"], default="mindswin")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2, help="batches before the steady-state clock starts")
    parser.add_argument("--batches", type=int, default=12, help="batches timed (at most the epoch: images // batch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mindcv_threads", action="store_true", help="mindcv with python_multiprocessing=False")
    parser.add_argument("--json", action="store_true", help="one JSON line per measurement")
    parser.add_argument("--markdown", help="also write this markdown table (e.g. docs/data_bench.md)")
    parser.add_argument("--in_process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    pipelines = ["mindswin", "mindcv"] if args.pipeline == "both" else [args.pipeline]
    rows = []
    for workers in args.workers:
        for pipeline in pipelines:
            if args.in_process:
                row = run_one(pipeline, args, workers)
            else:
                row = run_isolated(pipeline, args, workers)
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(f"{pipeline:8s} workers {workers}: {row['img_per_s']:.1f} img/s "
                      f"({row['img_per_s_per_core']:.1f} per core)", flush=True)
        if args.pipeline == "both":
            ratio = dict(pipeline="ratio", workers=workers,
                         mindswin_over_mindcv=round(rows[-2]["img_per_s"] / rows[-1]["img_per_s"], 3))
            print(json.dumps(ratio) if args.json else f"mindswin / mindcv at {workers} worker(s): "
                  f"{ratio['mindswin_over_mindcv']:.2f}x", flush=True)
    if args.markdown:
        write_markdown(os.path.abspath(args.markdown), rows, args)


if __name__ == "__main__":
    main()
