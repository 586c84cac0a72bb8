"""Run under msrun with 2 workers: SimMIM pre-training through train.py's entry point, then each rank's masks.

train.py's ``run_train`` trains (and prints ``rank R weights sha1 W state sha1 S``); then every
rank builds the SimMIM task's training pipeline from the start and prints
``SIMMIM_MASKS {"rank": R, "masks": digest of its first batch's masks, "ratio": masked fraction}``.

Usage: msrun ... simmim_ranks.py TRAIN_PY_ARGUMENTS...
"""
import hashlib
import json
import sys

from mindswin.cli import run_train
from mindswin.config import parse_args
from mindswin.engine.runtime import Runtime
from mindswin.engine.state import RunPosition
from mindswin.engine.tasks import SimMIMTask


def main(argv):
    code = run_train(argv)
    if code:
        sys.exit(code)
    from mindspore.communication import get_group_size, get_rank

    config = parse_args(argv, script="train")
    runtime = Runtime(rank=get_rank(), group_size=get_group_size(), distributed=True)
    data, _ = SimMIMTask(config, runtime).train_data(RunPosition())
    _, masks = next(data.create_tuple_iterator(num_epochs=1))
    masks = masks.asnumpy()
    report = dict(rank=runtime.rank, masks=hashlib.sha1(masks.tobytes()).hexdigest()[:16],
                  ratio=float(masks.mean()))
    print("SIMMIM_MASKS " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
