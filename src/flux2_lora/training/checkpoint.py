"""Resumable checkpoints: written whole or not at all, newest K kept.

A checkpoint is built under a hidden temporary name and renamed into place, so a crash while saving
leaves the previous checkpoint intact and never a half-written one that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from flux2_lora import runs
from flux2_lora.hooks import hold_point

ADAPTER_FILE = "adapter.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
META_FILE = "meta.json"


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(
    run_dir: Path,
    step: int,
    adapter: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    scheduler_state: dict[str, Any],
    meta: dict[str, Any],
    keep: int,
) -> Path:
    root = run_dir / runs.CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{runs.CHECKPOINT_PREFIX}{step}"
    tmp = root / f".tmp-{runs.CHECKPOINT_PREFIX}{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in adapter.items()}, str(tmp / ADAPTER_FILE))
    hold_point("checkpoint-write", run_dir)
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
    torch.save(scheduler_state, tmp / SCHEDULER_FILE)
    # meta.json last: readers treat a folder without it as incomplete.
    (tmp / META_FILE).write_text(json.dumps({**meta, "step": step, "saved_at": time.time()}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    prune_checkpoints(run_dir, keep)
    return final


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    ckpts = runs.list_checkpoints(run_dir)
    for old in ckpts[: max(0, len(ckpts) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    # Leftovers of saves that crashed midway.
    root = run_dir / runs.CHECKPOINTS_DIR
    for stale in root.glob(f".tmp-{runs.CHECKPOINT_PREFIX}*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid != str(os.getpid()):
            shutil.rmtree(stale, ignore_errors=True)


def resolve_resume(run_dir: Path, resume: str) -> Path:
    if resume == "latest":
        found = runs.latest_checkpoint(run_dir)
        if found is None:
            raise CheckpointError(
                f"--resume latest: no complete checkpoint in {run_dir / runs.CHECKPOINTS_DIR}"
            )
        return found
    path = Path(resume)
    if not (path / META_FILE).is_file():
        raise CheckpointError(f"--resume: {path} is not a complete checkpoint (no {META_FILE})")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META_FILE).read_text())
        adapter = load_file(str(path / ADAPTER_FILE))
        scheduler = torch.load(path / SCHEDULER_FILE, weights_only=False)
        opt_path = path / OPTIMIZER_FILE
        optimizer = torch.load(opt_path, weights_only=False) if opt_path.is_file() else None
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"--resume: cannot read checkpoint {path}: {e}") from None
    return {"meta": meta, "adapter": adapter, "scheduler": scheduler, "optimizer": optimizer}
