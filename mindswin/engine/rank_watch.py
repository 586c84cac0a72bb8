"""The last line of a distributed rank that MindSpore ends before Python can say anything.

When a peer of an msrun job is lost (a node dies, its worker is killed), the surviving ranks
block in a collective until MindSpore's cluster layer gives up and ends their processes
from C++ (the scheduler's "timed out node" and msrun's ``SIGKILL`` of the worker's process
group): no Python handler runs. So each rank starts a small watcher process in a session of
its own (out of reach of msrun's ``killpg``) that shares the rank's log, hears from the rank
where its resume state stands, and, if the rank's process ends without saying it finished,
writes the run's own last line into the rank's log: which rank was lost (from msrun's
``scheduler.log`` beside the log, on the node that ran the scheduler), the last resume
state on disk and the command that continues from it.

Run as a script (``python -I rank_watch.py PID RANK [LOG_FILE [LEFTOVERS]]``), this file imports nothing but the
standard library: it starts in a few milliseconds and holds a few MB for the whole run.
"""
from __future__ import annotations

import atexit
import glob
import os
import re
import selectors
import shlex
import subprocess
import sys
import time
from typing import List, Optional, Sequence

__all__ = ["RankWatch", "continue_command", "lost_ranks"]

FINISHED = "finished"
STATE = "state "
COMMAND = "command "
# How long the watcher waits, after the rank ended, for the scheduler's log to name the lost peer: the
# scheduler notes the timed-out node before the cluster ends the workers, so this is only slack.
SCHEDULER_LOG_WAIT_S = 3.0


class RankWatch:
    """This rank's watcher: tell it each resume state saved; Python's own exit tells it the run finished.

    Args:
        rank: This process's rank.
        log_file: A file the line is appended to as well (the rank's ``log_rank{rank}.txt``).
        argv: The script and its arguments (default ``sys.argv``), for the command that continues.
        leftovers: A glob of files the rank would have removed at its exit, removed by the watcher instead.
    """

    def __init__(self, rank: int, log_file: str = "", argv: Optional[Sequence[str]] = None,
                 leftovers: str = "") -> None:
        self._argv, self._launcher = list(sys.argv if argv is None else argv), parent_command_line()
        read_end, self._write_end = os.pipe()
        self._owner = os.getpid()
        console = launcher_console()
        # start_new_session: msrun ends a worker with killpg, which must not reach the watcher; -I: the standard
        # library only, not this file's folder
        self.process = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), str(os.getpid()),
                                         str(rank), log_file, leftovers], stdin=read_end,
                                        stderr=console or subprocess.DEVNULL, start_new_session=True)
        os.close(read_end)
        if console is not None:
            console.close()
        # nothing saved yet: the same command starts the run again (from the state it names, if it names one)
        self._send(COMMAND + continue_command(self._argv, self._launcher, resume_auto=False))
        # atexit runs whenever Python ends the process itself: a finished run, or one that failed with its
        # own error line or traceback; MindSpore's C++ exit and a SIGKILL skip it, and then the watcher speaks
        atexit.register(self.finished)

    def _send(self, line: str) -> None:
        if self._write_end is not None:
            os.write(self._write_end, (line.replace("\n", " ") + "\n").encode())

    def saved(self, description: str) -> None:
        """A resume state was saved in ``ckpt_save_dir``: where it stands, in words; ``--resume auto`` continues."""
        self._send(STATE + description)
        self._send(COMMAND + continue_command(self._argv, self._launcher))

    def started_from(self, description: str) -> None:
        """The run resumed from a state (where it stands, in words); until one is saved, the same command continues."""
        self._send(STATE + description)

    def finished(self) -> None:
        """This process ends through Python: the watcher stays silent."""
        # a process forked from this one (a data worker) inherits the pipe and the atexit list
        if self._write_end is not None and os.getpid() == self._owner:
            self._send(FINISHED)
            os.close(self._write_end)
            self._write_end = None


def continue_command(argv: Sequence[str], launcher: Optional[Sequence[str]] = None, resume_auto: bool = True) -> str:
    """The command that continues this run: the launcher's command line (msrun's, from the parent process) around
    ``argv`` (the script and its arguments), with ``--resume auto`` in place of any ``--resume`` if
    ``resume_auto`` (a state in ``ckpt_save_dir``), else as it is (nothing saved yet: the same start again)."""
    args: List[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume" and resume_auto:
            skip = True
        elif not (resume_auto and arg.startswith("--resume=")):
            args.append(arg)
    if resume_auto:
        args += ["--resume", "auto"]
    if launcher:
        script = os.path.basename(argv[0]) if argv else ""
        cut = next((i for i, part in enumerate(launcher) if script and os.path.basename(part) == script), None)
        if cut is not None:
            return shlex.join([*launcher[:cut + 1], *args[1:]])
    return shlex.join(["python", *args])


def parent_command_line() -> List[str]:
    """The parent process's command line (msrun's, for a worker it launched); empty when unreadable."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            parts = [p.decode(errors="replace") for p in f.read().split(b"\0") if p]
    except OSError:
        return []
    # msrun runs as "python .../bin/msrun ARGS": show it as the user typed it
    for i, part in enumerate(parts):
        if os.path.basename(part) == "msrun":
            return ["msrun", *parts[i + 1:]]
    return parts


def launcher_console():
    """msrun's own stderr (its console), opened for appending, when msrun launched this process; else None.

    msrun sends a worker's output to its log file and stops echoing it once a worker fails, so the watcher's
    line goes to msrun's console too.
    """
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            if not any(os.path.basename(p) == b"msrun" for p in f.read().split(b"\0")):
                return None
        return open(f"/proc/{os.getppid()}/fd/2", "a")
    except OSError:
        return None


def lost_ranks(scheduler_log: str) -> List[int]:
    """The ranks msrun's scheduler reported timed out, in its log's order (empty: none, or no log here)."""
    try:
        with open(scheduler_log, errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    found: List[int] = []
    for match in re.finditer(r"The node: (\d+) is timed out|worker (\d+) is the first one timed out", text):
        rank = int(match.group(1) or match.group(2))
        if rank not in found:
            found.append(rank)
    return found


def _log_folder() -> Optional[str]:
    """The folder of the log this process writes to (msrun's log_dir for a worker), if it is a file."""
    try:
        target = os.readlink("/proc/self/fd/1")
    except OSError:
        return None
    return os.path.dirname(target) if os.path.isfile(target) else None


def last_line(rank: int, lost: Sequence[int], state: Optional[str], command: str) -> str:
    """The watcher's one line for a rank that ended without finishing."""
    if lost:
        which = ", ".join(str(r) for r in lost)
        cause = f"rank{'s' if len(lost) > 1 else ''} {which} of the job stopped answering (msrun's scheduler.log)"
    else:
        cause = ("the process was ended from outside Python (a peer lost, msrun stopping the job after another "
                 "worker failed, or the kernel's OOM killer)")
    where = (f"the last resume state on disk is {state}" if state
             else "no resume state was written yet, so the run starts over")
    return (f"error: rank {rank} stopped: {cause}; {where}; to continue, run on every node its own msrun command "
            f"as on this one: {command}")


def watch(pid: int, rank: int, log_file: str = "", leftovers: str = "") -> None:
    """Follow process ``pid`` (rank ``rank``) until it ends; unless it said it finished, print :func:`last_line`
    (and append it to ``log_file``) and remove the files matching ``leftovers``."""
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "messages")
    buffer, lines, ended = b"", [], False
    try:
        # readable once the process has ended (Linux 5.3)
        selector.register(os.pidfd_open(pid), selectors.EVENT_READ, "ended")
    except ProcessLookupError:  # it ended before this process started
        ended = True
    while not ended:
        for key, _ in selector.select():
            if key.data == "ended":
                ended = True
                continue
            chunk = os.read(sys.stdin.fileno(), 65536)
            if not chunk:  # every writer closed (the rank, and any child it forked): wait for the end itself
                selector.unregister(sys.stdin.fileno())
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines += [line.decode(errors="replace") for line in complete]
    # what the rank wrote just before it ended is in the pipe still
    os.set_blocking(sys.stdin.fileno(), False)
    try:
        while chunk := os.read(sys.stdin.fileno(), 65536):
            buffer += chunk
    except BlockingIOError:
        pass
    lines += [line.decode(errors="replace") for line in buffer.split(b"\n") if line]
    if FINISHED in lines:
        return
    for path in glob.glob(leftovers) if leftovers else ():
        try:
            os.remove(path)
        except OSError:
            pass
    state = next((line[len(STATE):] for line in reversed(lines) if line.startswith(STATE)), None)
    command = next((line[len(COMMAND):] for line in reversed(lines) if line.startswith(COMMAND)), "")
    folder = _log_folder()
    scheduler_log = os.path.join(folder, "scheduler.log") if folder else ""
    deadline = time.monotonic() + SCHEDULER_LOG_WAIT_S
    lost = lost_ranks(scheduler_log)
    while not lost and os.path.exists(scheduler_log) and time.monotonic() < deadline:
        time.sleep(0.2)
        lost = lost_ranks(scheduler_log)
    line = last_line(rank, [r for r in lost if r != rank], state, command)
    print(line, flush=True)
    try:
        print(line, file=sys.stderr, flush=True)  # msrun's console (launcher_console), else nowhere
    except OSError:  # the console is gone
        pass
    if log_file:
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:5])
