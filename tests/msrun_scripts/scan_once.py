"""Under msrun: the classification task's scan runs on rank 0 only and every rank gets its index.

    msrun --worker_num 2 --local_worker_num 2 ... scan_once.py SPLIT_DIR
"""
import hashlib
import os
import sys
from types import SimpleNamespace

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import mindspore as ms  # noqa: E402
from mindspore.communication import get_rank, init  # noqa: E402

import mindswin.data.folder as folder  # noqa: E402
from mindswin.data import DataError, scan_split  # noqa: E402
from mindswin.engine.collective import share_from_rank0  # noqa: E402


def main() -> None:
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    init()
    rank = get_rank()
    share = share_from_rank0(SimpleNamespace(distributed=True, is_main=rank == 0))
    scans = []
    real = folder._scan_split
    folder._scan_split = lambda *args: scans.append(args) or real(*args)
    index = scan_split(sys.argv[1], share=share)
    digest = hashlib.sha1(index.to_bytes()).hexdigest()
    bad = ",".join(sorted(os.path.basename(p) for p, _ in index.bad_files))
    print(f"rank {rank} samples {len(index)} scans {len(scans)} bad {bad} sha1 {digest}", flush=True)
    try:
        scan_split(sys.argv[1] + "-missing", share=share)
    except DataError as exc:
        print(f"rank {rank} error {str(exc)[:40]}", flush=True)


if __name__ == "__main__":
    main()
