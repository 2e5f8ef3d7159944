"""``python -m flux2_lora.experiments.child PARENT_PID -- ARGV...``: run ARGV so that it dies with the sweep.

A trainer outliving a sweep killed with SIGKILL would go on using the GPU that the re-run hands to
another trial. On Linux the kernel sends the trainer SIGKILL when its parent ends (PR_SET_PDEATHSIG,
kept across exec; :func:`flux2_lora.process_tree.kill_with_parent`); elsewhere this only execs. Imports
nothing heavy (the standard library): it becomes the trainer at once.
"""

from __future__ import annotations

import os
import sys

from flux2_lora.process_tree import kill_with_parent


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        sys.stderr.write("usage: python -m flux2_lora.experiments.child PARENT_PID -- ARGV...\n")
        sys.exit(2)
    kill_with_parent(int(argv[0]))
    os.execv(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
