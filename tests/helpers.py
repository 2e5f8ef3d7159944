"""Running the CLI as a user would, in a subprocess with the test session's demo cache; a trainer held at a
named point (:mod:`flux2_lora.hooks`), so a test acts on it there instead of racing it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from flux2_lora import runs
from flux2_lora.hooks import HOLD_ENV

if TYPE_CHECKING:
    from flux2_lora.config import TrainConfig
    from flux2_lora.training.outcome import RunOutcome


def cli(*args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "flux2_lora.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"flux2-lora {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return proc


def start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "flux2_lora.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )


def train_argv(out: Path, *overrides: str, preset: str = "quickstart") -> list[str]:
    """The command line of ``flux2-lora train --preset quickstart`` (or ``preset``) into ``out``, with
    ``--set`` overrides."""
    return [
        sys.executable,
        "-m",
        "flux2_lora.cli",
        "train",
        "--preset",
        preset,
        *sets(f"output.dir={out}", *overrides),
    ]


@contextmanager
def held_trainer(
    out: Path, point: str, *overrides: str, preset: str = "quickstart"
) -> Iterator[subprocess.Popen[bytes]]:
    """``flux2-lora train --preset quickstart`` into ``out``, held at ``point`` (``name`` or ``name@N``):
    yields the process once it is there, and kills it on the way out unless the test ended it."""
    proc = subprocess.Popen(
        train_argv(out, *overrides, preset=preset),
        env={**os.environ, HOLD_ENV: point},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        marker = out / f".held-{point.split('@')[0]}"
        assert wait_for(lambda: marker.exists() or proc.poll() is not None, timeout=300)
        assert proc.poll() is None, f"the trainer exited ({proc.returncode}) before reaching {point}"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def wait_for(predicate: Callable[[], object], timeout: float = 120, interval: float = 0.02) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1])["step"] if lines else 0


def sets(*pairs: str) -> list[str]:
    out: list[str] = []
    for p in pairs:
        out += ["--set", p]
    return out


def assert_finished(outcome: RunOutcome, config: TrainConfig) -> None:
    """``run_training`` trained every step of ``config`` and wrote the LoRA, and the run's status says so
    (it returns a stopped outcome too, so a bare call proves nothing)."""
    out = Path(config.output.dir).expanduser().resolve()
    total = config.training.max_steps
    assert (outcome.state, outcome.step, outcome.total_steps) == ("finished", total, total), outcome
    assert outcome.lora == out / runs.LORA_FILE and outcome.lora.is_file(), outcome
    status = runs.read_status(out)
    assert status is not None and (status.state, status.step) == ("finished", total), status


def needs_extra(module: str, extra: str) -> pytest.MarkDecorator:
    """Skip, saying which extra to install, where an optional dependency is absent."""
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None,
        reason=f"needs {module}: pip install 'flux2-lora[{extra}]'",
    )


NEEDS_BNB = needs_extra("bitsandbytes", "quantization")
NEEDS_TORCHAO = needs_extra("torchao", "quantization")
NEEDS_PRODIGY = needs_extra("prodigyopt", "optimizers")
