"""The sweep folder and its study, shared by the worker (:mod:`.sweep`) and its readers (:mod:`.status`,
the web UI): file names, the Optuna storage, the lock files that tell a live worker from a dead one, and
how a finished trial is scored. No torch; Optuna is imported where a study is opened.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flux2_lora import runs
from flux2_lora.config.io import to_dict, validate_dict
from flux2_lora.locks import FileLock

if TYPE_CHECKING:
    import optuna

STUDY_FILE = "study.db"
SPEC_FILE = "sweep.yaml"
BEST_FILE = "best.yaml"
STOP_FILE = runs.STOP_FILE  # one stop protocol for runs and sweeps (runs.write_stop_request)
OWNER_FILE = ".sweep-owner"
ASK_LOCK_FILE = ".sweep-ask.lock"
TRIAL_OUT = "sweep-trial.out"
TRIAL_PREFIX = "trial-"
HEARTBEAT_S = 30
GRACE_S = 120
MAX_RETRIES = 2  # a trial interrupted more often than this is given up (and counted)


class SweepError(Exception):
    """A sweep that cannot start or go on; the message names the option, file or trial."""


class TrialFailed(Exception):
    """The trial's trainer failed (counted: running it again would fail again)."""


def trial_dir_name(number: int) -> str:
    return f"{TRIAL_PREFIX}{number:04d}"


def storage_url(sweep_dir: Path, storage: str | None) -> str:
    return storage or f"sqlite:///{(sweep_dir / STUDY_FILE).resolve()}"


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_storage(url: str, on_stale: Callable[..., None] | None = None) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage (SQLite, PostgreSQL, MySQL, … by URL) with heartbeats; SweepError naming
    --storage when the URL cannot be opened."""
    import optuna
    import sqlalchemy.exc

    quiet_optuna()
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    # Opening a new SQLite study creates its tables; two processes doing it at once (the sweep driver and
    # the UI reading its status, or two workers) collide ("table alembic_version already exists"), so
    # openers of one file take turns.
    db = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
    lock = FileLock(Path(db + ".lock")) if db and db != ":memory:" else None
    try:
        if lock is not None:
            lock.acquire()
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=kwargs,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=on_stale,
        )
    except OSError as e:
        raise SweepError(f"--storage: cannot lock {db}.lock: {e.strerror or e}") from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, ImportError) as e:
        shown = url if "@" not in url else url.split("://", 1)[0] + "://…"  # no password on the console
        raise SweepError(
            f"--storage: cannot open {shown}: {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from None
    finally:
        if lock is not None:
            lock.release()


def objective_value(run_dir: Path, objective: str) -> tuple[float, str, int | None]:
    """(value, which one, its step): the final eval loss, else the final training loss."""
    if objective == "eval_loss":
        evals = runs.read_eval(run_dir)
        if evals:
            return evals[-1]["eval_loss"], "eval_loss", evals[-1]["step"]
    metrics = [m for m in runs.read_jsonl(run_dir / runs.METRICS_FILE) if _is_number(m.get("loss"))]
    if not metrics:
        raise TrialFailed("the run logged no loss to rank it by")
    kind = "train_loss" if objective == "train_loss" else "train_loss (no eval loss in this run)"
    step = metrics[-1].get("step")
    return float(metrics[-1]["loss"]), kind, step if isinstance(step, int) else None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def counts_toward_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Finished, pruned, running and queued trials count; a failed one only when it is not run again."""
    from optuna.trial import TrialState

    if trial.state == TrialState.FAIL:
        return bool(trial.user_attrs.get("counted"))
    return True


def trial_config_dict(run_dir: Path) -> dict[str, Any] | None:
    """A trial's resolved config (its config.yaml), validated; None when missing or invalid."""
    from flux2_lora.config.io import read_yaml

    data, _ = read_yaml(run_dir / runs.CONFIG_FILE)
    config, _ = validate_dict(data if isinstance(data, dict) else {})
    return to_dict(config) if config is not None else None
