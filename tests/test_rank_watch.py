"""A rank's last line when MindSpore ends its process: the watcher (mindswin/engine/rank_watch.py) with a
stand-in rank, a small Python process that is killed as msrun kills a worker. The msrun run that loses a
node is tests/test_distributed.py's ``test_a_lost_node_is_named_and_both_nodes_resume_to_the_uninterrupted_run``."""
import subprocess
import sys
import time

import pytest

from mindswin.engine import rank_watch
from mindswin.engine.rank_watch import continue_command, last_line, lost_ranks

# A stand-in rank: starts its watcher (rank_watch.py loaded by path: no MindSpore import), reports a
# resume state, then ends as it is told: "exit" (through Python) or "kill" (SIGKILL to its process group,
# as msrun ends a worker).
RANK = """
import importlib.util, os, signal, sys
spec = importlib.util.spec_from_file_location("rank_watch", sys.argv[1])
rank_watch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rank_watch)
leftover = f"{sys.argv[4]}/ipc_{os.getpid()}_0"
open(leftover, "w").close()  # as MindSpore's worker processes leave one
watch = rank_watch.RankWatch(0, sys.argv[3], argv=["train.py", "--data_dir", "d"], leftovers=leftover)
watch.saved("the end of epoch 1/2 (optimizer step 6), out/resume_state.ckpt on rank 0's node")
print("trained", flush=True)
if sys.argv[2] == "kill":
    os.killpg(os.getpgid(0), signal.SIGKILL)
"""


def _stand_in_rank(folder, ending, scheduler_log=None):
    """Run the stand-in rank with its stdout in ``folder/worker_0.log`` (msrun's layout); returns the log's text
    once the watcher has ended."""
    folder.mkdir()
    if scheduler_log is not None:
        (folder / "scheduler.log").write_text(scheduler_log)
    with open(folder / "worker_0.log", "w") as log:
        rank = subprocess.Popen([sys.executable, "-c", RANK, rank_watch.__file__, ending,
                                 str(folder / "log_rank0.txt"), str(folder)], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        rank.wait(timeout=60)
    deadline = time.time() + 30
    text = ""
    while time.time() < deadline:  # the watcher outlives the rank by design: wait for its line or its end
        text = (folder / "worker_0.log").read_text()
        if "error:" in text or (ending == "exit" and not _watchers_alive(folder)):
            break
        time.sleep(0.1)
    return text


def _watchers_alive(folder) -> bool:
    result = subprocess.run(["pgrep", "-f", f"rank_watch.py .* {folder}"], capture_output=True)
    return result.returncode == 0


def test_a_killed_rank_gets_the_lost_peer_the_last_state_and_the_command(tmp_path):
    scheduler = ("[ERROR] DISTRIBUTED(1,2,python):2026-12-07-23:10:58 [meta_server_node.cc:548] UpdateTopoState] "
                 "The node: 1 is timed out. It may exit with exception, please check this node's log.\n")
    text = _stand_in_rank(tmp_path / "logs", "kill", scheduler)
    lines = text.strip().splitlines()
    assert lines[0] == "trained" and len(lines) == 2, text
    assert lines[-1] == ("error: rank 0 stopped: rank 1 of the job stopped answering (msrun's scheduler.log); the last "
                         "resume state on disk is the end of epoch 1/2 (optimizer step 6), out/resume_state.ckpt on "
                         "rank 0's node; to continue, run on every node its own msrun command as on this one: "
                         "python train.py --data_dir d --resume auto")
    assert (tmp_path / "logs" / "log_rank0.txt").read_text().rstrip().endswith(lines[-1])
    assert not list((tmp_path / "logs").glob("ipc_*"))  # what the rank's exit would have removed


def test_a_rank_killed_with_no_scheduler_log_here_says_it_was_ended_from_outside(tmp_path):
    text = _stand_in_rank(tmp_path / "logs", "kill")
    assert "error: rank 0 stopped: the process was ended from outside Python (a peer lost" in text, text


def test_a_rank_that_ends_through_python_leaves_no_line(tmp_path):
    text = _stand_in_rank(tmp_path / "logs", "exit", "The node: 1 is timed out.\n")
    assert text == "trained\n"
    assert not (tmp_path / "logs" / "log_rank0.txt").exists()


@pytest.mark.parametrize("argv, launcher, resume_auto, expected", [
    (["train.py", "--data_dir", "d", "--resume", "x.ckpt"], ["msrun", "--node_rank", "1", "/w/train.py", "--data_dir",
     "d", "--resume", "x.ckpt"], True, "msrun --node_rank 1 /w/train.py --data_dir d --resume auto"),
    (["train.py", "--resume=x.ckpt", "--data_dir", "my data"], [], True,
     "python train.py --data_dir 'my data' --resume auto"),
    (["train.py", "--resume", "x.ckpt"], ["msrun", "train.py", "--resume", "x.ckpt"], False,
     "msrun train.py --resume x.ckpt"),
])
def test_the_command_that_continues_puts_resume_auto_in_the_launchers_command(argv, launcher, resume_auto, expected):
    assert continue_command(argv, launcher, resume_auto) == expected


def test_lost_ranks_are_read_from_the_schedulers_words(tmp_path):
    log = tmp_path / "scheduler.log"
    assert lost_ranks(str(log)) == []
    log.write_text("The node: 3 is timed out. ...\nRuntimeError: The total number of timed out node is 2. Timed out "
                   "node list is: [const vector]{3, 5}, worker 3 is the first one timed out, please check its log.\n"
                   "The node: 5 is timed out.\n")
    assert lost_ranks(str(log)) == [3, 5]
    assert last_line(0, [3, 5], None, "c").startswith(
        "error: rank 0 stopped: ranks 3, 5 of the job stopped answering (msrun's scheduler.log); no resume state was "
        "written yet, so the run starts over;")
