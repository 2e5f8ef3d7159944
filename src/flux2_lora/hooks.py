"""A test hook: hold the trainer at a named point so a test can SIGKILL it exactly there.

Inert unless ``FLUX2_LORA_TEST_HOLD`` names the point (``name`` or ``name@N`` for its N-th visit);
the crash-recovery tests use it to kill the trainer while loading, mid-step, halfway through writing
a checkpoint, and while sampling. The held process writes ``<run>/.held-<name>`` and waits until it is
killed, or until a test writes ``<run>/.release-<name>`` (the sweep tests hold one worker's trial while
another worker runs).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

HOLD_ENV = "FLUX2_LORA_TEST_HOLD"
_visits: Counter[str] = Counter()


def hold_point(name: str, run_dir: Path) -> None:
    wanted = os.environ.get(HOLD_ENV)
    if not wanted:
        return
    target, _, nth = wanted.partition("@")
    if target != name:
        return
    _visits[name] += 1
    if _visits[name] != int(nth or 1):
        return
    (run_dir / f".held-{name}").write_text(str(os.getpid()))
    release = run_dir / f".release-{name}"
    while not release.exists():  # until killed or released
        time.sleep(0.1)
