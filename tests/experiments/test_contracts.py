"""The small contracts the sweep stands on: the eval.jsonl reader and the trainer's releasable hold point."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from flux2_lora import hooks, runs
from tests.helpers import wait_for


def test_read_eval_keeps_well_formed_records_only(tmp_path: Path) -> None:
    lines = [
        {"step": 10, "eval_loss": 0.5, "time": 1.0, "seconds": 0.2},
        {"step": "20", "eval_loss": 0.4},  # a step that is not a number
        {"step": 30, "eval_loss": True},  # a boolean is not a loss
        {"step": 40, "eval_loss": 0.3},  # time and seconds are optional
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\nnot json\n" + '{"step": 50, "eval_loss": 0.2'
    (tmp_path / runs.EVAL_FILE).write_text(text)  # the last line is still being written
    assert runs.read_eval(tmp_path) == [
        {"step": 10, "eval_loss": 0.5, "time": 1.0, "seconds": 0.2},
        {"step": 40, "eval_loss": 0.3, "time": None, "seconds": None},
    ]
    assert runs.read_eval(tmp_path / "missing") == []


def test_a_held_point_waits_until_released(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hooks.HOLD_ENV, "probe@1")
    monkeypatch.setattr(hooks, "_visits", hooks.Counter())
    t = threading.Thread(target=hooks.hold_point, args=("probe", tmp_path), daemon=True)
    t.start()
    assert wait_for((tmp_path / ".held-probe").exists, timeout=30)
    assert t.is_alive()
    (tmp_path / ".release-probe").write_text("go")
    t.join(30)
    assert not t.is_alive()
