"""``python -m flux2_lora.experiments.child PARENT_PID -- ARGV...``: run ARGV so that it dies with the sweep.

A trainer outliving a sweep killed with SIGKILL would go on using the GPU that the re-run hands to
another trial. On Linux the kernel sends the trainer SIGKILL when its parent ends (PR_SET_PDEATHSIG,
kept across exec); elsewhere this only execs. Imports nothing heavy: it becomes the trainer at once.
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent ended before the setting took effect
        os._exit(1)


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        sys.stderr.write("usage: python -m flux2_lora.experiments.child PARENT_PID -- ARGV...\n")
        sys.exit(2)
    _die_with_parent(int(argv[0]))
    os.execv(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
