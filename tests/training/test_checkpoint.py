"""Checkpoints are written whole or not at all, and only the newest K stay."""

from __future__ import annotations

import errno
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from flux2_lora import runs
from flux2_lora.config import TrainingSection
from flux2_lora.training import checkpoint as ckpt
from tests.helpers import NEEDS_PRODIGY


def _save(run_dir: Path, step: int, keep: int = 2) -> Path:
    adapter = {"a.lora_A.weight": torch.full((2, 2), float(step))}
    return ckpt.save_checkpoint(
        run_dir,
        step,
        adapter,
        {"state": {}, "param_groups": []},
        {"last_epoch": step},
        {"total_steps": 10},
        keep=keep,
    )


def test_crash_while_saving_leaves_the_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _save(tmp_path, 2)
    real_save = torch.save

    def dying_save(obj: object, path: Path, *a: Any, **k: Any) -> None:
        if "scheduler" in str(path):
            raise OSError("disk full")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(OSError):
        _save(tmp_path, 4)
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert [p.name for p in runs.list_checkpoints(tmp_path)] == ["checkpoint-2"]
    state = ckpt.load_checkpoint(ckpt.resolve_resume(tmp_path, "latest"))
    assert state["meta"]["step"] == 2 and state["adapter"]["a.lora_A.weight"][0, 0] == 2.0
    assert not (tmp_path / "checkpoints" / "checkpoint-4").exists()


def test_keep_last_k(tmp_path: Path) -> None:
    for step in (2, 4, 6):
        _save(tmp_path, step, keep=2)
    assert [p.name for p in runs.list_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-6"]


def test_resume_path_must_be_complete(tmp_path: Path) -> None:
    with pytest.raises(ckpt.CheckpointError, match="not a complete checkpoint"):
        ckpt.resolve_resume(tmp_path, str(tmp_path / "nope"))
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        ckpt.resolve_resume(tmp_path, "latest")


# --------------------------------------------------------------------------- nothing is unpickled
class _Payload:
    """Unpickling this would create ``marker``: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[Path], None], tuple[Path]]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("victim", [ckpt.SCHEDULER_FILE, ckpt.OPTIMIZER_FILE])
@pytest.mark.parametrize("fmt", ["torch", "plain-pickle"])
def test_a_pickle_payload_is_refused_by_file_and_never_runs(tmp_path: Path, victim: str, fmt: str) -> None:
    path = _save(tmp_path, 2)
    marker = tmp_path / "payload-ran"
    state = {"last_epoch": 2, "evil": _Payload(marker)}
    if fmt == "torch":
        torch.save(state, path / victim)
    else:
        (path / victim).write_bytes(pickle.dumps(state))
    assert not marker.exists()
    with pytest.raises(ckpt.CheckpointError, match=f"{victim}.*never unpickle"):
        ckpt.load_checkpoint(path)
    problem = ckpt.validate_checkpoint(path)
    assert problem is not None and victim in problem and "never unpickle" in problem
    with pytest.raises(ckpt.CheckpointError, match=victim):
        ckpt.resolve_resume(tmp_path, str(path))
    assert not marker.exists()


def _trained(
    optimizer: str, scheduler: str, momentum: float = 0.0
) -> tuple[TrainingSection, list[torch.nn.Parameter], torch.optim.Optimizer, Any]:
    from flux2_lora.training.optim import build_optimizer, build_scheduler

    t = TrainingSection(
        optimizer=optimizer, lr_scheduler=scheduler, max_steps=10, warmup_steps=2, momentum=momentum
    )
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = build_optimizer(t, params)
    sched = build_scheduler(t, opt)
    for _ in range(3):
        (params[0].square().sum() + params[1].sum()).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return t, params, opt, sched


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN equals NaN here


@pytest.mark.parametrize(
    ("optimizer", "momentum"),
    [
        ("adamw", 0.0),
        ("adam", 0.0),
        ("sgd", 0.0),
        ("sgd", 0.9),
        ("adafactor", 0.0),
        pytest.param("prodigy", 0.0, marks=NEEDS_PRODIGY),
    ],
)
@pytest.mark.parametrize("scheduler", ["constant", "cosine", "linear", "polynomial"])
def test_every_optimizer_and_schedule_resumes_from_safe_files(
    tmp_path: Path, optimizer: str, momentum: float, scheduler: str
) -> None:
    from flux2_lora.training.optim import build_optimizer, build_scheduler

    t, params, opt, sched = _trained(optimizer, scheduler, momentum)
    adapter = {"p0": params[0].detach(), "p1": params[1].detach()}
    path = ckpt.save_checkpoint(tmp_path, 3, adapter, opt.state_dict(), sched.state_dict(), {}, keep=2)
    assert ckpt.validate_checkpoint(path, ckpt.expected_shapes(adapter)) is None
    state = ckpt.load_checkpoint(path)
    fresh = [
        torch.nn.Parameter(state["adapter"]["p0"].clone()),
        torch.nn.Parameter(state["adapter"]["p1"].clone()),
    ]
    opt2 = build_optimizer(t, fresh)
    sched2 = build_scheduler(t, opt2)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert _same(opt.state_dict(), opt2.state_dict())
    assert sched2.get_last_lr() == sched.get_last_lr() and sched2.last_epoch == sched.last_epoch


def test_numpy_values_are_stored_as_plain_numbers_and_unknown_objects_refused(tmp_path: Path) -> None:
    import numpy as np

    adapter = {"a": torch.zeros(2, 2)}
    state = {
        "state": {0: {"step": np.int64(3), "scale": np.float32(0.5), "buf": np.ones(2)}},
        "param_groups": [],
    }
    path = ckpt.save_checkpoint(tmp_path, 1, adapter, state, {"last_epoch": np.int64(1)}, {}, keep=2)
    loaded = ckpt.load_checkpoint(path)
    assert loaded["optimizer"]["state"][0]["step"] == 3 and loaded["scheduler"]["last_epoch"] == 1
    assert torch.equal(loaded["optimizer"]["state"][0]["buf"], torch.ones(2, dtype=torch.float64))
    with pytest.raises(ckpt.CheckpointError, match=r"scheduler state\.fn \(_Payload\)"):
        ckpt.save_checkpoint(tmp_path, 2, adapter, None, {"fn": _Payload(tmp_path / "x")}, {}, keep=2)
    assert [p.name for p in runs.list_checkpoints(tmp_path)] == ["checkpoint-1"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


# --------------------------------------------------------------------------- broken checkpoints
def _truncate_adapter(path: Path) -> None:
    f = path / ckpt.ADAPTER_FILE
    f.write_bytes(f.read_bytes()[:-5])


def _bad_meta(path: Path) -> None:
    (path / ckpt.META_FILE).write_text("{not json")


def _meta_not_a_dict(path: Path) -> None:
    (path / ckpt.META_FILE).write_text("[1, 2]")


def _truncated_optimizer(path: Path) -> None:
    f = path / ckpt.OPTIMIZER_FILE
    f.write_bytes(f.read_bytes()[:40])


@pytest.mark.parametrize(
    ("damage", "file"),
    [
        (_truncate_adapter, ckpt.ADAPTER_FILE),
        (_bad_meta, ckpt.META_FILE),
        (_meta_not_a_dict, ckpt.META_FILE),
        (_truncated_optimizer, ckpt.OPTIMIZER_FILE),
    ],
)
def test_latest_skips_a_broken_newest_checkpoint_and_a_path_to_it_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Callable[[Path], None], file: str
) -> None:
    _save(tmp_path, 2)
    newest = _save(tmp_path, 4)
    damage(newest)
    with caplog.at_level("WARNING", logger="flux2_lora"):
        assert ckpt.resolve_resume(tmp_path, "latest").name == "checkpoint-2"
    assert "skipping checkpoint-4" in caplog.text and file in caplog.text
    with pytest.raises(ckpt.CheckpointError, match=f"cannot resume from .*checkpoint-4.*{file}"):
        ckpt.resolve_resume(tmp_path, str(newest))


def test_a_validator_rejects_another_rank_and_latest_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _save(tmp_path, 2)
    other = ckpt.save_checkpoint(
        tmp_path, 4, {"a.lora_A.weight": torch.zeros(4, 2)}, None, {"last_epoch": 4}, {}, keep=3
    )
    expected = {"a.lora_A.weight": (2, 2)}

    def validator(path: Path) -> str | None:
        return ckpt.validate_checkpoint(path, expected)

    with caplog.at_level("WARNING", logger="flux2_lora"):
        assert ckpt.resolve_resume(tmp_path, "latest", validator=validator).name == "checkpoint-2"
    assert "has shape (4, 2)" in caplog.text and "lora.rank" in caplog.text
    with pytest.raises(
        ckpt.CheckpointError, match=r"adapter.safetensors: a.lora_A.weight has shape \(4, 2\)"
    ):
        ckpt.resolve_resume(tmp_path, str(other), validator=validator)
    assert "lacks 1 adapter tensor" in ckpt.validate_checkpoint(other, {**expected, "b": (1,)})


def test_latest_with_only_broken_checkpoints_names_them(tmp_path: Path) -> None:
    _bad_meta(_save(tmp_path, 2))
    with pytest.raises(ckpt.CheckpointError, match="no readable checkpoint.*meta.json"):
        ckpt.resolve_resume(tmp_path, "latest")


def test_no_checkpoint_message_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.resolve_resume(tmp_path, "latest")
    assert "without --resume" in str(e.value) and "--resume auto" in str(e.value)


def test_status_write_leaves_no_temp_file_when_the_disk_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status = tmp_path / runs.STATUS_FILE
    runs.write_json_atomic(status, {"state": "training"})
    real = Path.write_text

    def disk_full(self: Path, *a: object, **k: object) -> None:
        real(self, "")  # the file is created, then the write fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError):
        runs.write_json_atomic(status, {"state": "finished"})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [runs.STATUS_FILE]
    assert json.loads(status.read_text()) == {"state": "training"}


@pytest.mark.parametrize(
    ("folder", "step", "reason"),
    [
        ("checkpoint-3", 10**30, "is beyond any run"),
        ("checkpoint-3", 999, "past the step its folder is named for"),
        ("checkpoint-3", -1, "whole number ≥ 0"),
        ("a-copied-checkpoint", 10**30, "is beyond any run"),
    ],
)
def test_a_checkpoint_step_out_of_bounds_is_refused_by_file_and_skipped_by_latest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, folder: str, step: int, reason: str
) -> None:
    _save(tmp_path, 2)
    bad = _save(tmp_path, 3).rename(tmp_path / runs.CHECKPOINTS_DIR / folder)
    meta = json.loads((bad / ckpt.META_FILE).read_text())
    (bad / ckpt.META_FILE).write_text(json.dumps({**meta, "step": step}))
    problem = ckpt.validate_checkpoint(bad)
    assert problem is not None and str(bad / ckpt.META_FILE) in problem and reason in problem
    with pytest.raises(ckpt.CheckpointError, match=reason):
        ckpt.resolve_resume(tmp_path, str(bad))
    with caplog.at_level("WARNING", logger="flux2_lora"):
        assert ckpt.resolve_resume(tmp_path, "latest").name == "checkpoint-2"
    if folder.startswith(runs.CHECKPOINT_PREFIX):  # only such folders are candidates for latest
        assert f"skipping {folder}" in caplog.text and reason in caplog.text


def test_resuming_past_max_steps_is_refused_with_what_to_do(tmp_path: Path) -> None:
    _save(tmp_path, 6)
    with pytest.raises(ckpt.CheckpointError, match=r"at step 6, past training\.max_steps=3.*above 6"):
        ckpt.resolve_resume(tmp_path, "latest", max_steps=3)
    assert ckpt.resolve_resume(tmp_path, "latest", max_steps=6).name == "checkpoint-6"


def test_a_failed_checkpoint_write_removes_its_temp_folder_and_names_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import save_file

    _save(tmp_path, 2)

    def full(tensors: Any, filename: str, *a: Any, **k: Any) -> None:
        save_file(tensors, filename, *a, **k)  # a partial file is there, then the disk is full
        raise RuntimeError("I/O error: No space left on device (os error 28)")  # safetensors' own error

    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(runs.RunWriteError, match=r"^disk full while writing checkpoint-4 .*checkpoint-2"):
        _save(tmp_path, 4)
    assert sorted(p.name for p in (tmp_path / runs.CHECKPOINTS_DIR).iterdir()) == ["checkpoint-2"]
