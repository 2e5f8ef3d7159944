"""The run's status.json follows every step (issue 22): the monitor's progress and ETA move from the first
step, not only every ``logging.log_every`` steps."""

from __future__ import annotations

import json
from pathlib import Path

from flux2_lora import runs
from flux2_lora.config import TrainConfig
from flux2_lora.training.tracking import RunReporter


def test_each_step_is_written_with_its_eta(tmp_path: Path) -> None:
    cfg = TrainConfig.model_validate({"logging": {"log_every": 10}, "training": {"max_steps": 30}})
    reporter = RunReporter(tmp_path, cfg, 30)
    reporter.set_state("training", "training steps 1–30")
    for step in (1, 2, 3):
        reporter.step_done(step, 0.5)
        # The file as written (read_status would judge this test's lock-less run dead).
        status = json.loads((tmp_path / runs.STATUS_FILE).read_text())
        assert status["step"] == step and status["state"] == "training"
        assert status["eta_seconds"] is not None and status["eta_seconds"] >= 0.5 * (30 - step)
    assert status["message"] == "training steps 1–30"  # the message of the state is kept
