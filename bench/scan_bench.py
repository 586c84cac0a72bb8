"""Start-up cost of indexing a large ImageFolder split: a first start, a restart with the kept index, other ranks.

    python bench/scan_bench.py /tmp/scan1m --files 1000000 --classes 1000 [--workers 2] [--drop-caches] [--json]

Writes ``ROOT/train/<class>/<file>.JPEG`` (tiny valid JPEGs, ``--files`` in all) unless the
tree is there, then times, each in this process:

* ``scan_split`` with the default ``verify="auto"`` (above ``FULL_VERIFY_LIMIT`` files: a
  header check of every file with ``--workers`` threads), the work rank 0 does at a start
  without a kept index (every start before the index existed), writing the index;
* the same call at a restart, which reads the kept index after one ``stat`` per folder
  (``IndexCache``); ``--drop-caches`` empties the kernel's page and inode caches before each
  of the two (root only), as after a reboot or on a node that has not read the tree;
* ``FolderIndex.to_bytes`` / ``from_bytes``: what the other ranks do instead (plus the
  transfer of the compressed bytes, whose size is printed).

The files are tiny, so the figures are the per-file costs (directory walk, open, header
parse) that a big split pays whatever its image sizes; a full decode of real images costs
milliseconds per file on top (``verify="full"``).
"""
import argparse
import io
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def make_tree(root: str, files: int, classes: int) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buffer, "JPEG")
    data = buffer.getvalue()
    per_class = -(-files // classes)
    written = 0
    for c in range(classes):
        folder = os.path.join(root, "train", f"n{c:08d}")
        os.makedirs(folder, exist_ok=True)
        for i in range(min(per_class, files - written)):
            with open(os.path.join(folder, f"n{c:08d}_{i}.JPEG"), "wb") as f:
                f.write(data)
        written += per_class


def drop_caches(enabled: bool) -> None:
    """Empty the kernel's page, dentry and inode caches (root only), so the next read hits the disk."""
    if enabled:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root")
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--drop-caches", action="store_true")
    args = parser.parse_args()
    import shutil
    import tempfile

    from mindswin.data.folder import FolderIndex, IndexCache, scan_split

    split = os.path.join(args.root, "train")
    if not os.path.isdir(split):
        start = time.perf_counter()
        make_tree(args.root, args.files, args.classes)
        print(f"wrote {args.files} files in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        time.sleep(IndexCache.RACY_SECONDS)  # a tree changed within that of its scan is scanned again
    index_dir = tempfile.mkdtemp(prefix="scan_index-")
    try:
        drop_caches(args.drop_caches)
        start = time.perf_counter()
        index = scan_split(split, num_workers=args.workers, cache_dir=index_dir)
        scan_s = time.perf_counter() - start
        drop_caches(args.drop_caches)
        start = time.perf_counter()
        again = scan_split(split, num_workers=args.workers, cache_dir=index_dir)
        restart_s = time.perf_counter() - start
        index_mb = sum(os.path.getsize(os.path.join(index_dir, f)) for f in os.listdir(index_dir)) / 2 ** 20
    finally:
        shutil.rmtree(index_dir)
    assert again == index
    start = time.perf_counter()
    payload = index.to_bytes()
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    received = FolderIndex.from_bytes(payload, split)
    decode_s = time.perf_counter() - start
    assert received == index
    result = dict(files=len(index), folders=len(index.watched), workers=args.workers, cold=args.drop_caches,
                  scan_s=round(scan_s, 2), restart_with_index_s=round(restart_s, 2), index_file_mb=round(index_mb, 2),
                  to_bytes_s=round(encode_s, 3), from_bytes_s=round(decode_s, 3),
                  payload_mb=round(len(payload) / 2 ** 20, 2), loadavg=round(os.getloadavg()[0], 2))
    print(json.dumps(result) if args.json else
          f"{result['files']} files in {result['folders']} folders{' (cold caches)' if args.drop_caches else ''}: "
          f"rank-0 start without an index {result['scan_s']} s (header check, {args.workers} threads), restart "
          f"with the kept index {result['restart_with_index_s']} s ({result['index_file_mb']} MB file, "
          f"{scan_s / max(restart_s, 1e-9):.0f}x faster); index {result['payload_mb']} MB compressed for the other "
          f"ranks, to_bytes {result['to_bytes_s']} s, from_bytes {result['from_bytes_s']} s")


if __name__ == "__main__":
    main()
