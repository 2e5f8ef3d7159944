"""A multi-process run lives and dies as one: the CLI → accelerate's launcher → its workers (no torch here).

torch's elastic agent starts every worker in a session of its own, so a signal to the CLI's process group
(the web UI's force stop, a test's kill, a closed terminal) never reaches them: killed with the launcher,
they would go on training, or stay held, with nobody holding the run lock. So each link ends with the one
above it: the launcher gets SIGKILL when the CLI dies (the kernel's parent-death signal), and a worker
kills itself once its launcher is gone. Graceful stops travel down instead: the CLI forwards SIGINT and
SIGTERM to the launcher, which hands them to the workers (they checkpoint and exit).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from types import FrameType

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _kill_me_with_parent() -> None:
    """In a child between fork and exec: SIGKILL when the parent dies (Linux; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def run_child(cmd: Sequence[str], env: Mapping[str, str]) -> int:
    """Run ``cmd`` in its own session, killed if this process dies, with SIGINT / SIGTERM passed on to it
    once (not twice, as a shared process group would); returns its exit code."""
    proc = subprocess.Popen(list(cmd), env=dict(env), start_new_session=True, preexec_fn=_kill_me_with_parent)

    def forward(signum: int, _frame: FrameType | None) -> None:
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:  # left by an exception here: the child must not outlive the CLI
            proc.kill()
            proc.wait()


def exit_with_parent(poll_s: float = 0.5) -> None:
    """Kill this process once its parent is gone (it has been re-parented): a worker of a dead launcher."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="exit with the launcher").start()
