"""Child processes of the chain drivers (``scripts/release.py``, ``scripts/demo.py``, ``scripts/steps_study.py``).

A driver runs each step (``train.py``, ``eval.py``, ...) as a child process and waits for it. With a plain
``subprocess.run``, a driver that was sent SIGTERM or SIGHUP on its own (``kill <pid>``, a closed terminal, a scheduler
stopping the driver) died at once and left its child running as an orphan, still writing into the step's run folder,
which the user may since have moved or reused; and a Ctrl-C had ``subprocess.run`` SIGKILL the child a quarter of a
second later, in the middle of whatever it was doing (a checkpoint write). :func:`run_child` passes those signals on
and returns only when the child has ended.
"""

import os
import signal
import subprocess
import sys
from collections.abc import Sequence

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def _terminal_signals_reach_child() -> bool:
    """Whether this process runs in its terminal's foreground process group: a Ctrl-C then reaches the child (same
    group) without forwarding, and a forwarded copy would interrupt the child's own clean shutdown a second time."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False


def run_child(command: Sequence[str], **popen_kwargs) -> int:
    """Run ``command`` (``subprocess.Popen`` arguments) to its end and return its exit code (negative: the signal
    that ended it). SIGTERM, SIGHUP and SIGINT received meanwhile are passed on to the child (SIGINT only when the
    terminal did not already deliver it to the child), which ends as it would alone; the driver then reports the
    child's exit code like any other failure. Call it from the main thread (Python runs signal handlers there)."""
    process = subprocess.Popen(list(command), **popen_kwargs)

    def forward(signum, frame) -> None:
        if signum == signal.SIGINT and _terminal_signals_reach_child():
            return
        if process.poll() is None:
            process.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED_SIGNALS}
    try:
        return process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
