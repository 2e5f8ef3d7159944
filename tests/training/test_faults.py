"""What a run leaves behind when it is stopped, refused, runs out of disk or diverges (issue 18): a LoRA or
a resumable checkpoint, the run's record intact, one line saying what happened, never a temp folder."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from flux2_lora import runs
from flux2_lora.training import checkpoint as ckpt
from flux2_lora.training import trainer as trainer_module
from flux2_lora.training.outcome import TrainingDiverged
from flux2_lora.training.trainer import Trainer, run_training
from tests.conftest import MakeConfig
from tests.helpers import assert_finished


def _stop_at(monkeypatch: pytest.MonkeyPatch, out: Path, step: int) -> None:
    """The UI's Stop button (the stop file) pressed while step ``step`` trains."""
    seen = {"step": 0}

    def hold_point(name: str, run_dir: Path) -> None:
        if name == "step":
            seen["step"] += 1
            if seen["step"] == step:
                (run_dir / runs.STOP_FILE).write_text("")

    monkeypatch.setattr(trainer_module, "hold_point", hold_point)
    out.mkdir(parents=True, exist_ok=True)


def _disk_full(*_a: object, **_k: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _record(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in (runs.STATUS_FILE, runs.CONFIG_FILE)}


# ----------------------------------------------------------------------------------------- point 7: a stop
def test_a_stop_during_the_last_step_finishes_the_run(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config("training.max_steps=4", "output.checkpoint_every=250")
    out = Path(config.output.dir)
    _stop_at(monkeypatch, out, 4)
    outcome = run_training(config)
    assert_finished(outcome, config)
    assert outcome.checkpoint is not None and outcome.checkpoint.name == "checkpoint-4"
    assert [p.name for p in runs.list_checkpoints(out)] == ["checkpoint-4"]
    assert "stopped during the last step" in runs.read_status(out).message
    assert not (out / runs.STOP_FILE).exists()  # acted on: it must not stop the next run


def test_a_stop_in_the_middle_saves_that_step_and_resumes_to_the_end(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # checkpoint_every far beyond the stop: the stop's own checkpoint is all there is to resume.
    config = make_config("training.max_steps=4", "output.checkpoint_every=250")
    out = Path(config.output.dir)
    _stop_at(monkeypatch, out, 3)
    outcome = run_training(config)
    assert (outcome.state, outcome.step, outcome.lora) == ("stopped", 3, None)
    assert outcome.checkpoint == out.resolve() / runs.CHECKPOINTS_DIR / "checkpoint-3"
    assert [p.name for p in runs.list_checkpoints(out)] == ["checkpoint-3"]
    assert not (out / runs.LORA_FILE).exists()
    status = runs.read_status(out)
    assert (status.state, status.step) == ("stopped", 3) and "checkpoint-3 saved" in status.message
    monkeypatch.undo()
    assert_finished(run_training(config, "latest"), config)


# ----------------------------------------------------------------------------------------- point 8: what is there
def test_a_fresh_run_archives_a_lora_and_checkpoints_it_finds_without_a_status(
    make_config: MakeConfig,
) -> None:
    config = make_config("training.max_steps=2")
    out = Path(config.output.dir)
    (out / runs.CHECKPOINTS_DIR / "checkpoint-9").mkdir(parents=True)
    (out / runs.CHECKPOINTS_DIR / "checkpoint-9" / ckpt.META_FILE).write_text('{"step": 9}')
    (out / runs.LORA_FILE).write_bytes(b"someone else's LoRA")
    assert_finished(run_training(config), config)
    [previous] = (out / runs.PREVIOUS_DIR).iterdir()
    assert (previous / runs.LORA_FILE).read_bytes() == b"someone else's LoRA"
    assert (previous / runs.CHECKPOINTS_DIR / "checkpoint-9" / ckpt.META_FILE).read_text() == '{"step": 9}'
    assert [p.name for p in runs.list_checkpoints(out)] == ["checkpoint-2"]


@pytest.mark.parametrize(
    ("resume", "overrides", "message"),
    [
        ("latest", ("lora.rank=8", "lora.alpha=8", "training.max_steps=4"), r"no readable checkpoint.*shape"),
        ("folder", ("lora.rank=8", "lora.alpha=8", "training.max_steps=4"), r"cannot resume from .*shape"),
        ("latest", ("training.max_steps=1",), r"at step 2, past training\.max_steps=1"),
    ],
    ids=["latest-other-rank", "folder-other-rank", "past-max-steps"],
)
def test_a_refused_resume_leaves_the_runs_record_as_it_was(
    make_config: MakeConfig, resume: str, overrides: tuple[str, ...], message: str
) -> None:
    first = make_config("lora.rank=4", "lora.alpha=4", "training.max_steps=2")
    out = Path(first.output.dir)
    assert_finished(run_training(first), first)
    before, lora = _record(out), (out / runs.LORA_FILE).read_bytes()
    other = make_config("lora.rank=4", "lora.alpha=4", *overrides, out=out)
    target = "latest" if resume == "latest" else str(runs.latest_checkpoint(out))
    with pytest.raises(ckpt.CheckpointError, match=message):
        run_training(other, target)
    assert _record(out) == before  # finished 2/2 at rank 4, as it was
    assert (out / runs.LORA_FILE).read_bytes() == lora
    assert runs.read_status(out).state == "finished"


# ----------------------------------------------------------------------------------------- point 9: disk full
def test_disk_full_at_a_checkpoint_fails_in_one_line_and_leaves_no_temp_folder(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flux2_lora.cli.train import train_here

    real_save = torch.save

    def full_at_step_4(obj: Any, path: Any, *a: Any, **k: Any) -> None:
        if "checkpoint-4" in str(path):
            _disk_full()
        real_save(obj, path, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", full_at_step_4)
    config = make_config("training.max_steps=6", "output.checkpoint_every=2")
    out = Path(config.output.dir)
    assert train_here(config, None) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "disk full while writing checkpoint-4" in errors[0], err
    assert "newest intact checkpoint is checkpoint-2" in errors[0]
    assert "Traceback" not in err and "Logging error" not in err
    assert not list((out / runs.CHECKPOINTS_DIR).glob(".tmp-*"))
    assert [p.name for p in runs.list_checkpoints(out)] == ["checkpoint-2"]
    status = runs.read_status(out)
    assert status.state == "failed" and status.message.startswith("disk full while writing checkpoint-4")


@pytest.mark.parametrize("target", ["status", "metrics"])
def test_disk_full_writing_status_or_metrics_fails_with_the_file_named(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    from flux2_lora.training import tracking

    config = make_config("training.max_steps=4")
    out = Path(config.output.dir)
    name = runs.STATUS_FILE if target == "status" else runs.METRICS_FILE
    real_status, real_append = runs.write_json_atomic, runs.append_jsonl
    failed: list[str] = []

    def write_json_atomic(path: Path, data: Any) -> None:
        # Once, in the middle of training; the failure itself is recorded (space came free).
        if target == "status" and data.get("step") == 3 and not failed:
            failed.append(path.name)
            _disk_full()
        real_status(path, data)

    def append_jsonl(path: Path, record: dict[str, Any]) -> None:
        if target == "metrics" and record.get("step") == 3:
            failed.append(path.name)
            _disk_full()
        real_append(path, record)

    monkeypatch.setattr(tracking.runs, "write_json_atomic", write_json_atomic)
    monkeypatch.setattr(tracking.runs, "append_jsonl", append_jsonl)
    with pytest.raises(runs.RunWriteError, match=rf"^disk full while writing {name}: No space left"):
        run_training(config)
    monkeypatch.undo()
    assert failed == [name]
    status = runs.read_status(out)
    assert status.state == "failed" and status.message.startswith(f"disk full while writing {name}")


def test_an_unwritable_train_log_is_said_once_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flux2_lora.training.tracking import setup_logging

    class FullDisk:
        def write(self, _text: str) -> None:
            _disk_full()

        def flush(self) -> None:
            pass

    setup_logging(tmp_path, True)
    logger = logging.getLogger("flux2_lora")
    [handler] = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    handler.stream = FullDisk()  # type: ignore[assignment]
    for i in range(3):
        logger.info("record %d", i)
    err = capsys.readouterr().err
    assert err.count("cannot write") == 1 and "No space left on device" in err
    assert "Logging error" not in err and "Traceback" not in err
    assert "record 2" in err  # the console log goes on


# ----------------------------------------------------------------------------------------- point 10: divergence
@pytest.mark.parametrize("log_every", [1, 5], ids=["seen-when-logged", "seen-at-the-checkpoint"])
def test_a_nan_loss_is_written_as_null_and_stops_the_run_keeping_the_last_good_checkpoint(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch, log_every: int
) -> None:
    real = trainer_module.flow_matching_loss
    calls = {"n": 0}

    def diverging(*a: Any, **k: Any) -> torch.Tensor:
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] >= 3 else loss

    monkeypatch.setattr(trainer_module, "flow_matching_loss", diverging)
    config = make_config(
        "training.max_steps=6", "output.checkpoint_every=2", f"logging.log_every={log_every}"
    )
    out = Path(config.output.dir)
    with pytest.raises(
        TrainingDiverged, match=r"^loss diverged \(NaN\) at step 3; the last good checkpoint is checkpoint-2"
    ):
        run_training(config)
    assert [p.name for p in runs.list_checkpoints(out)] == ["checkpoint-2"]  # no poisoned checkpoint-4
    assert not (out / runs.LORA_FILE).exists()
    status = runs.read_status(out)
    assert status.state == "failed" and status.message.startswith("loss diverged (NaN) at step 3")
    if log_every == 1:  # logged every step: the diverged step's line is there, its loss null
        text = (out / runs.METRICS_FILE).read_text()
        assert "NaN" not in text and "Infinity" not in text
        losses = {r["step"]: r["loss"] for r in map(json.loads, text.splitlines())}
        assert losses[2] is not None and losses[3] is None
    json.loads((out / runs.STATUS_FILE).read_text())  # strict JSON


def test_poisoned_weights_are_never_checkpointed(make_config: MakeConfig) -> None:
    t = Trainer(make_config())
    t.setup()
    with torch.no_grad():
        t.lora_params[0].fill_(float("inf"))
    with pytest.raises(
        TrainingDiverged, match=r"^the LoRA weights diverged \(NaN\) at step 1; no checkpoint"
    ):
        t.save_checkpoint(1)
    assert runs.list_checkpoints(t.run_dir) == []


# ----------------------------------------------------------------------------------------- point 11: resume bounds
def test_resume_latest_on_a_finished_run_says_so_and_does_nothing(
    make_config: MakeConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    from flux2_lora.cli.train import train_here

    config = make_config("training.max_steps=2")
    out = Path(config.output.dir)
    assert_finished(run_training(config), config)
    before, lora = _record(out), (out / runs.LORA_FILE).stat().st_mtime_ns
    outcome = run_training(config, "latest")
    assert outcome.already_finished and (outcome.state, outcome.step) == ("finished", 2)
    assert "is finished (2/2 steps" in outcome.message and "raise training.max_steps" in outcome.message
    capsys.readouterr()
    assert train_here(config, "latest") == 0
    assert "is finished (2/2 steps" in capsys.readouterr().err
    assert _record(out) == before and (out / runs.LORA_FILE).stat().st_mtime_ns == lora


def test_a_lora_write_that_failed_is_written_by_resume_at_once(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flux2_lora.training.export as export

    monkeypatch.setattr(export, "save_diffusers_lora", _disk_full)
    config = make_config("training.max_steps=2")
    out = Path(config.output.dir)
    with pytest.raises(
        runs.RunWriteError, match=r"^disk full while writing the LoRA .*safe in .*checkpoint-2"
    ):
        run_training(config)
    assert not (out / ".lora-tmp").exists() and not (out / runs.LORA_FILE).exists()
    monkeypatch.undo()
    assert_finished(run_training(config, "latest"), config)
    assert "all 2 steps trained: writing the final LoRA" in (out / runs.LOG_FILE).read_text()
