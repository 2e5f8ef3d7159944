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
from pathlib import Path
from types import FrameType
from typing import Any

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def kill_with_parent(parent: int | None = None) -> None:
    """In a child between fork and exec (a ``preexec_fn``, or the :mod:`flux2_lora.experiments.child`
    shim): SIGKILL when the parent dies (Linux; elsewhere nothing). The setting is kept across exec.
    With ``parent`` (its pid): exit at once if it has already ended, before the setting took effect."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def trainer_command(
    config_path: str | Path,
    *,
    resume: str | None = None,
    python: Sequence[str] | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line of a trainer: ``python -m flux2_lora.cli train --config FILE [--resume R]``.
    ``python`` replaces the interpreter part (accelerate's launcher runs the module itself)."""
    head = [sys.executable] if python is None else list(python)
    cmd = [*head, "-m", "flux2_lora.cli", "train", "--config", str(config_path)]
    if resume:
        cmd += ["--resume", resume]
    return cmd + list(extra)


def start_process(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    output: Path | None = None,
    own_session: bool = False,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a trainer (or any child of ours), no shell. ``output``: its stdout and stderr go to that file
    (stdin closed); ``own_session``: a Ctrl-C or a signal to our process group does not reach it;
    ``die_with_parent``: the kernel kills it when this process dies (a ``preexec_fn``: not for processes
    that start children from several threads, which use the child shim instead)."""
    kwargs: dict[str, Any] = {
        "env": None if env is None else dict(env),
        "start_new_session": own_session,
        "preexec_fn": kill_with_parent if die_with_parent else None,
    }
    if output is None:
        return subprocess.Popen(list(cmd), **kwargs)
    with Path(output).open("wb") as out:
        return subprocess.Popen(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs
        )


def run_child(cmd: Sequence[str], env: Mapping[str, str]) -> int:
    """Run ``cmd`` in its own session, killed if this process dies, with SIGINT / SIGTERM passed on to it
    once (not twice, as a shared process group would); returns its exit code."""
    proc = start_process(cmd, env=env, own_session=True, die_with_parent=True)

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
