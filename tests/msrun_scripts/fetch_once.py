"""Under msrun: every worker of the node asks for the same published file; local rank 0 alone downloads it.

    msrun --worker_num 2 --local_worker_num 2 ... fetch_once.py URL SHA256 CACHE_DIR

Prints ``FETCHED {"rank": R, "path": P}`` (or ``"error"``) on every rank.
"""
import json
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import mindspore as ms  # noqa: E402
from mindspore.communication import get_rank, init  # noqa: E402

from mindswin.models.published import WeightFile  # noqa: E402
from mindswin.pretrained.download import fetch  # noqa: E402


def main(url: str, sha256: str, cache: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    ms.set_device("CPU")
    init()  # a job's workers, as train.py's
    file = WeightFile("official", url, "official", "official/micro.safetensors", sha256)
    try:
        report = {"path": fetch(file, pretrained_dir=cache)}
    except Exception as exc:  # reported to the test, which names it
        report = {"error": str(exc)}
    print("FETCHED " + json.dumps({"rank": get_rank(), **report}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
