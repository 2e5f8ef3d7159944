"""Resumable checkpoints: written whole or not at all, newest K kept, never unpickled.

A checkpoint is built under a hidden temporary name and renamed into place, so a crash while saving
leaves the previous checkpoint intact and never a half-written one that looks complete.

Optimizer and scheduler state are stored with ``torch.save`` but only ever read with
``torch.load(weights_only=True)``: tensors and plain values (numbers, strings, lists, dicts) load,
anything else in the file (a pickled object whose ``__reduce__`` would run code) is refused with the
file's name. A checkpoint folder can come from anywhere (a copied run, an uploaded archive), so it is
data, never code.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import shutil
import time
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from flux2_lora import runs
from flux2_lora.hooks import hold_point

ADAPTER_FILE = "adapter.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
META_FILE = "meta.json"
EMA_FILE = "ema.safetensors"  # the adapter's EMA (training.ema_decay > 0), keyed like adapter.safetensors
MAX_META_BYTES = 1 << 20  # meta.json holds a handful of fields


def _max_steps_bound() -> int:
    from flux2_lora.config.schema import TrainingSection

    bounds = [getattr(m, "le", None) for m in TrainingSection.model_fields["max_steps"].metadata]
    return next(int(b) for b in bounds if b is not None)


MAX_STEP = _max_steps_bound()  # no checkpoint is further than the longest run the config allows

log = logging.getLogger("flux2_lora")

# A validator gets a checkpoint folder and returns why it cannot be resumed, or None when it can.
Validator = Callable[[Path], str | None]


class CheckpointError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------ writing
def _safe_state(obj: Any, where: str) -> Any:
    """``obj`` as tensors and plain values only, so that ``weights_only=True`` reads it back.

    Optimizers keep numpy scalars or similar in their state now and then; those become Python
    numbers. Anything else would make the checkpoint unreadable, so it fails the save, by key."""
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor, torch.dtype)):
        return obj
    if isinstance(obj, Mapping):
        return {k: _safe_state(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_safe_state(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return tuple(items) if isinstance(obj, tuple) else items
    item = getattr(obj, "item", None)  # numpy scalars and 0-d arrays
    if callable(item) and getattr(obj, "shape", None) == ():
        value = item()
        if isinstance(value, (bool, int, float)):
            return value
    if type(obj).__module__ == "numpy" and hasattr(obj, "shape"):
        return torch.from_numpy(obj.copy())
    raise CheckpointError(
        f"cannot store {where} ({type(obj).__name__}) in a checkpoint: only tensors and plain values are saved"
    )


def save_checkpoint(
    run_dir: Path,
    step: int,
    adapter: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    scheduler_state: dict[str, Any],
    meta: dict[str, Any],
    keep: int,
    ema: dict[str, torch.Tensor] | None = None,
) -> Path:
    root = run_dir / runs.CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{runs.CHECKPOINT_PREFIX}{step}"
    tmp = root / f".tmp-{runs.CHECKPOINT_PREFIX}{step}-{os.getpid()}"
    # Converted before anything is written: a state that cannot be stored leaves no folder behind.
    optimizer_state = None if optimizer_state is None else _safe_state(optimizer_state, "optimizer state")
    scheduler_state = _safe_state(scheduler_state, "scheduler state")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in adapter.items()}, str(tmp / ADAPTER_FILE))
        if ema is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(tmp / EMA_FILE))
        hold_point("checkpoint-write", run_dir)
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
        torch.save(scheduler_state, tmp / SCHEDULER_FILE)
        # meta.json last: readers treat a folder without it as incomplete.
        (tmp / META_FILE).write_text(json.dumps({**meta, "step": step, "saved_at": time.time()}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except Exception as e:  # torch and safetensors report a failed write as their own errors
        # A full disk: the half-written folder goes (it holds the space), the earlier checkpoints stay.
        shutil.rmtree(tmp, ignore_errors=True)
        error = as_os_error(e)
        if error is None:
            raise
        previous = runs.latest_checkpoint(run_dir)
        hint = f"the newest intact checkpoint is {previous.name}" if previous else "no earlier checkpoint"
        raise runs.write_error(f"{final.name} (in {root})", error, hint + "; free space, then resume") from e
    prune_checkpoints(run_dir, keep)
    return final


def as_os_error(e: BaseException) -> OSError | None:
    """The OSError behind a failed write: torch.save reports a full disk as a RuntimeError ('file write
    failed', 'unexpected pos'), safetensors as its own error."""
    if isinstance(e, OSError):
        return e
    text = str(e)
    if "No space left" in text or "os error 28" in text:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if "file write failed" in text or "unexpected pos" in text:
        return OSError(None, "the write failed (is the disk full?)")
    return None


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


# ------------------------------------------------------------------------------------------ reading
def _read_meta(path: Path) -> dict[str, Any]:
    file = path / META_FILE
    try:
        if file.stat().st_size > MAX_META_BYTES:
            raise CheckpointError(f"{file}: too large for a checkpoint's meta.json")
        meta = json.loads(file.read_text(encoding="utf-8"))
    except CheckpointError:
        raise
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{file}: unreadable ({_reason(e)})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file}: not a JSON object")
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{file}: 'step' must be a whole number ≥ 0 (got {_short(step)})")
    if step > MAX_STEP:
        raise CheckpointError(
            f"{file}: 'step' {_short(step)} is beyond any run (training.max_steps ≤ {MAX_STEP})"
        )
    named = _named_step(path)
    if named is not None and step > named:
        raise CheckpointError(
            f"{file}: 'step' {step} is past the step its folder is named for ({path.name}): not a checkpoint "
            "this trainer wrote"
        )
    return meta


def _named_step(path: Path) -> int | None:
    """N of a folder named checkpoint-N (a checkpoint copied under another name has none)."""
    suffix = path.name[len(runs.CHECKPOINT_PREFIX) :] if path.name.startswith(runs.CHECKPOINT_PREFIX) else ""
    return int(suffix) if suffix.isdecimal() and len(suffix) < 20 else None


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint was written at (its meta.json, bounds-checked)."""
    return int(_read_meta(path)["step"])


def _safe_torch_load(file: Path, *, mmap: bool = False) -> Any:
    """``torch.load`` that only rebuilds tensors and plain values; refuses anything else by file name."""
    if not zipfile.is_zipfile(file):  # torch.save's format; a bare pickle is not even opened
        raise CheckpointError(
            f"{file}: not a complete torch archive (truncated, or a plain pickle, which checkpoints "
            "never unpickle)"
        )
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{file}: refused: it holds objects other than tensors and plain values, and checkpoints are "
            f"never unpickled (written by another program, or tampered with?): {_reason(e)}"
        ) from None
    except Exception as e:  # a truncated or foreign file makes torch raise many types
        raise CheckpointError(f"{file}: unreadable ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return _short(text[0] if text else type(e).__name__, 300)


def _short(value: Any, limit: int = 100) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def adapter_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a checkpoint's adapter, from the safetensors header (no data read);
    a truncated file fails here, because the header's offsets run past its end."""
    return _header_shapes(path / ADAPTER_FILE)


def _header_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error type for damaged files
        raise CheckpointError(f"{file}: unreadable ({_reason(e)})") from None


def expected_shapes(adapter: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """What :func:`validate_checkpoint` compares against: the live adapter's state dict shapes."""
    return {k: tuple(v.shape) for k, v in adapter.items()}


def validate_checkpoint(path: Path, expected: Mapping[str, tuple[int, ...]] | None = None) -> str | None:
    """Why the checkpoint at ``path`` cannot be resumed (naming the file), or None when it can.

    Reads meta.json, the adapter's header and the optimizer/scheduler files (memory-mapped, so their
    tensors are not copied). With ``expected`` (adapter key → shape, see :func:`expected_shapes`),
    an adapter of another rank or other target layers is refused too."""
    try:
        _read_meta(path)
        shapes = adapter_shapes(path)
        ema = _header_shapes(path / EMA_FILE) if (path / EMA_FILE).is_file() else None
        if not (path / SCHEDULER_FILE).is_file():
            raise CheckpointError(f"{path / SCHEDULER_FILE}: missing")
        for name in (SCHEDULER_FILE, OPTIMIZER_FILE):
            if (path / name).is_file():
                _safe_torch_load(path / name, mmap=True)
    except CheckpointError as e:
        return str(e)
    if expected is not None:
        problem = _shape_mismatch(path / ADAPTER_FILE, shapes, expected)
        if problem is None and ema is not None:
            problem = _shape_mismatch(path / EMA_FILE, ema, expected)
        return problem
    return None


def _shape_mismatch(
    file: Path, found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]
) -> str | None:
    hint = "(was it trained with another lora.rank, lora.target_modules or model?)"
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        names = ", ".join((missing or extra)[:3]) + (" …" if len(missing or extra) > 3 else "")
        what = (
            f"lacks {len(missing)} adapter tensor(s) ({names})"
            if missing
            else f"has {len(extra)} unknown tensor(s) ({names})"
        )
        return f"{file}: {what} {hint}"
    for key, shape in expected.items():
        if tuple(found[key]) != tuple(shape):
            return (
                f"{file}: {key} has shape {tuple(found[key])}, this run's adapter needs {tuple(shape)} {hint}"
            )
    return None


def _check(path: Path, validator: Validator | None) -> str | None:
    return validate_checkpoint(path) or (validator(path) if validator else None)


def resolve_resume(
    run_dir: Path, resume: str, validator: Validator | None = None, max_steps: int | None = None
) -> Path:
    """The checkpoint folder to resume from.

    ``latest``: the newest checkpoint that is readable (and passes ``validator``, e.g. a shape check
    against the run's adapter); broken newer ones are skipped with a warning. A path: that checkpoint,
    or a :class:`CheckpointError` naming what is wrong with it. A checkpoint past ``max_steps`` (this
    run's training.max_steps) is refused: the run would train no step, and its LoRA would be of a longer
    run than the config says."""
    path = _resolve(run_dir, resume, validator)
    step = checkpoint_step(path)
    if max_steps is not None and step > max_steps:
        raise CheckpointError(
            f"--resume: {path} is at step {step}, past training.max_steps={max_steps}: nothing is left to "
            f"train. Set training.max_steps above {step} to train on, or use the LoRA of that run"
        )
    return path


def _resolve(run_dir: Path, resume: str, validator: Validator | None) -> Path:
    if resume == "latest":
        root = run_dir / runs.CHECKPOINTS_DIR
        skipped: list[str] = []
        for path in reversed(runs.list_checkpoints(run_dir)):
            problem = _check(path, validator)
            if problem is None:
                return path
            log.warning("--resume latest: skipping %s: %s", path.name, problem)
            skipped.append(problem)
        if skipped:
            raise CheckpointError(
                f"--resume latest: no readable checkpoint in {root}: " + "; ".join(skipped[:3])
            )
        raise CheckpointError(
            f"--resume latest: no complete checkpoint in {root} (the run stopped before its first "
            "checkpoint, see output.checkpoint_every). Start the run over without --resume, or use "
            "--resume auto, which resumes when a checkpoint exists and starts over otherwise"
        )
    path = Path(resume).expanduser()
    if not (path / META_FILE).is_file():
        raise CheckpointError(f"--resume: {path} is not a complete checkpoint (no {META_FILE})")
    problem = _check(path, validator)
    if problem:
        raise CheckpointError(f"--resume: cannot resume from {path}: {problem}")
    return path


def all_finite(adapter: Mapping[str, torch.Tensor]) -> bool:
    """Whether every adapter weight is a finite number (one wait for the device)."""
    flags = [torch.isfinite(v).all() for v in adapter.values()]
    return bool(torch.stack(flags).all().item()) if flags else True


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises its own error type for damaged files
        raise CheckpointError(f"--resume: cannot read checkpoint {file}: {_reason(e)}") from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    meta = _wrap(path, lambda: _read_meta(path))
    adapter = _read_tensors(path / ADAPTER_FILE)
    ema = _read_tensors(path / EMA_FILE) if (path / EMA_FILE).is_file() else None
    scheduler = _wrap(path, lambda: _safe_torch_load(path / SCHEDULER_FILE))
    opt_path = path / OPTIMIZER_FILE
    optimizer = _wrap(path, lambda: _safe_torch_load(opt_path)) if opt_path.is_file() else None
    if not isinstance(scheduler, dict) or (optimizer is not None and not isinstance(optimizer, dict)):
        raise CheckpointError(f"--resume: checkpoint {path}: optimizer or scheduler state is not a mapping")
    return {"meta": meta, "adapter": adapter, "scheduler": scheduler, "optimizer": optimizer, "ema": ema}


def _wrap(path: Path, read: Callable[[], Any]) -> Any:
    try:
        return read()
    except CheckpointError as e:
        raise CheckpointError(f"--resume: cannot read checkpoint {path}: {e}") from None
