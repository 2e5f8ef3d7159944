"""Sample now / save now / stop after this step (issue 24), asked of a running trainer through its run folder
(`flux2-lora ask`): acted on after the step it is asked at, acknowledged in the status. The trainer is held
at a step (flux2_lora.hooks) while the test asks, so nothing races."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flux2_lora import runs
from tests.helpers import cli, held_trainer, wait_for

pytestmark = pytest.mark.slow

ARGS = (
    "training.max_steps=4",
    "training.warmup_steps=0",
    "output.checkpoint_every=100",  # no checkpoint of its own before the end: step 2's is the one asked for
    "validation.every_n_steps=100",
    "validation.num_inference_steps=2",
    "logging.tensorboard=false",
)


def test_sample_and_save_now_are_done_after_the_step_and_acknowledged(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with held_trainer(out, "step@2", *ARGS) as proc:
        assert cli("ask", str(out), "save").returncode == 0
        waiting = subprocess.Popen(
            [sys.executable, "-m", "flux2_lora.cli", "ask", str(out), "sample", "--wait", "--timeout", "600"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert wait_for(lambda: (out / runs.ON_DEMAND["sample"]).exists(), timeout=120)
            (out / ".release-step").write_text("")
            said, err = waiting.communicate(timeout=600)
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.wait()
        assert waiting.returncode == 0, err
        assert "sampled at step 2 (asked for)" in said
        assert proc.wait(timeout=600) == 0
    status = runs.read_status(out)
    assert status is not None and status.state == "finished"
    acks = status.extra["on_demand"]
    assert acks["sample"]["step"] == 2 and acks["save"]["step"] == 2
    assert (out / runs.CHECKPOINTS_DIR / f"{runs.CHECKPOINT_PREFIX}2" / "meta.json").is_file()
    steps = [json.loads(line)["step"] for line in (out / runs.SAMPLES_INDEX).read_text().splitlines()]
    assert 2 in steps  # the asked-for samples, beside the final ones
    assert not any((out / name).exists() for name in runs.ON_DEMAND.values())  # acted on, removed


def test_stop_after_this_step_checkpoints_there(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with held_trainer(out, "step@2", *ARGS) as proc:
        assert cli("ask", str(out), "stop").returncode == 0
        (out / ".release-step").write_text("")
        proc.wait(timeout=600)
    status = runs.read_status(out)
    assert status is not None and (status.state, status.step) == ("stopped", 2)
    assert runs.latest_checkpoint(out) == out / runs.CHECKPOINTS_DIR / f"{runs.CHECKPOINT_PREFIX}2"


def test_asking_a_run_that_is_not_running_is_one_line(tmp_path: Path) -> None:
    gone = tmp_path / "old"
    gone.mkdir()
    runs.write_json_atomic(gone / runs.STATUS_FILE, {"state": "finished", "step": 4})
    for folder, words in ((gone, "no trainer is running there"), (tmp_path / "nope", "not a run folder")):
        proc = cli("ask", str(folder), "sample")
        assert proc.returncode == 2 and words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
