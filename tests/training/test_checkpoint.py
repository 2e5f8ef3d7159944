"""Checkpoints are written whole or not at all, and only the newest K stay."""

from __future__ import annotations

import pytest
import torch

from flux2_lora import runs
from flux2_lora.training import checkpoint as ckpt


def _save(run_dir, step: int, keep: int = 2):  # type: ignore[no-untyped-def]
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


def test_crash_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    _save(tmp_path, 2)
    real_save = torch.save

    def dying_save(obj, path, *a, **k):  # type: ignore[no-untyped-def]
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


def test_keep_last_k(tmp_path):  # type: ignore[no-untyped-def]
    for step in (2, 4, 6):
        _save(tmp_path, step, keep=2)
    assert [p.name for p in runs.list_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-6"]


def test_resume_path_must_be_complete(tmp_path):  # type: ignore[no-untyped-def]
    with pytest.raises(ckpt.CheckpointError, match="not a complete checkpoint"):
        ckpt.resolve_resume(tmp_path, str(tmp_path / "nope"))
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        ckpt.resolve_resume(tmp_path, "latest")
