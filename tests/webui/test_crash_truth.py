"""Issue 5: a trainer killed with SIGKILL reads as failed in the UI on the next poll, and after a UI restart."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flux2_lora.webui.actions import Actions
from flux2_lora.webui.paths import AppPaths

from ..helpers import held_trainer, wait_for

# Each trains real runs in subprocesses: seconds each on 2 CPU cores.
pytestmark = pytest.mark.slow


def test_killed_trainer_shows_failed_in_the_ui_and_after_restart(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    out = runs_dir / "crash"
    actions = Actions(AppPaths.create(runs_dir))
    args = (
        "training.max_steps=8",
        "training.warmup_steps=0",
        "output.checkpoint_every=2",
        "validation.enabled=false",
        "logging.tensorboard=false",
        "logging.log_every=1",
    )
    with held_trainer(out, "step@3", *args) as proc:
        assert actions.run_status(str(out))["state"] == "training"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    snap = actions.run_status(str(out))  # the next poll
    assert snap["state"] == "failed" and "3/8" in snap["message"] and snap["final"]
    assert "training steps" in snap["log"]  # the log tail is shown with the failure
    assert [r["state"] for r in actions.list_runs()] == ["failed"]
    # A UI restart is a new process reading the same run directory.
    code = (
        "import json; from flux2_lora.webui.actions import Actions; from flux2_lora.webui.paths import AppPaths; "
        f"print(json.dumps(Actions(AppPaths.create({str(runs_dir)!r})).list_runs()))"
    )
    fresh = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    assert fresh[0]["state"] == "failed" and fresh[0]["step"] == 3
    resumed = actions.resume_run(str(out))
    assert resumed.get("ok"), resumed
    assert wait_for(lambda: actions.run_status(str(out))["state"] == "finished", timeout=180)
