"""Running a sweep: an Optuna study (``DIR/study.db`` or ``--storage``), one run directory per trial.

Each trial is asked from the study, vetted by the memory model (one that cannot fit is pruned with the
reason), written as ``DIR/trial-NNNN/config.yaml`` and trained by a ``flux2-lora train`` subprocess;
its objective is the run's final eval loss, or its final training loss when it has no eval (the trial
says which). Trials run one per GPU in parallel (``--gpus``), one at a time otherwise.

Continuing and sharing. The study is the state: running the command again continues it, and several
workers (processes, machines) may share one study. A worker asks for a trial under a file lock in DIR
and records its host and run directory on the trial while it holds a lock file in that directory, so
another worker can tell a trial whose worker died (the lock file is free) from one that is running; the
first is marked failed with the reason and queued again with the same parameters. Workers on other
machines are covered by Optuna's heartbeat: a trial without one for ``GRACE_S`` is failed and re-queued
the same way. Failed trials that were re-queued do not count towards the trial budget; a trial whose
trainer itself failed does (running it again would fail again).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flux2_lora import runs
from flux2_lora.config.io import save_config, validate_dict
from flux2_lora.experiments.spec import Plan
from flux2_lora.experiments.store import (
    ASK_LOCK_FILE,
    GRACE_S,
    MAX_RETRIES,
    OWNER_FILE,
    TRIAL_OUT,
    SweepError,
    TrialFailed,
    counts_toward_budget,
    objective_value,
    open_storage,
    storage_url,
    trial_dir_name,
)
from flux2_lora.experiments.vet import Target, vet
from flux2_lora.locks import FileLock, is_held
from flux2_lora.process_tree import start_process, trainer_command
from flux2_lora.runs import RunState

if TYPE_CHECKING:
    import optuna

__all__ = ["Options", "Sweep", "SweepError", "TrialFailed", "TrialInterrupted", "default_trainer"]

STOP_TIMEOUT_S = 300.0  # a stopped trainer writes a checkpoint first


class TrialInterrupted(Exception):
    """The sweep was stopped while the trial ran (not counted: it is queued again)."""


def default_trainer(config_file: Path) -> list[str]:
    """``python -m flux2_lora.cli train --config FILE``, made to die with this process (see .child)."""
    # The shim, not a preexec_fn: trials start from several threads, where preexec_fn is unsafe.
    shim = [sys.executable, "-m", "flux2_lora.experiments.child", str(os.getpid()), "--"]
    return trainer_command(config_file, python=[*shim, sys.executable])


@dataclass
class Options:
    sweep_dir: Path
    storage: str | None = None
    gpus: Sequence[str] = ()  # CUDA device ids, one trial each at a time; () = one trial at a time
    target: Target = field(default_factory=lambda: Target(None))
    trials: int | None = None  # overrides the spec's
    prune: bool = False  # overrides the spec's pruning.enabled when True
    trainer: Callable[[Path], list[str]] = default_trainer
    poll_s: float = 0.5
    log: Callable[[str], None] = lambda line: print(line, flush=True)


class Sweep:
    """One worker of a sweep: runs trials until the study has its budget, or it is stopped."""

    def __init__(self, plan: Plan, options: Options) -> None:
        self.plan = plan
        self.opt = options
        self.dir = options.sweep_dir.resolve()
        self.budget = plan.trial_budget(options.trials)
        self.stop_event = threading.Event()
        self.error: str | None = None
        self.host = socket.gethostname()
        self.study_name = plan.spec.name or self.dir.name
        self.url = storage_url(self.dir, options.storage)
        self.storage: Any = None
        self.ran: list[int] = []

    # ---- the study ------------------------------------------------------------------------------------
    def open(self) -> optuna.Study:
        """Create or continue the study; SweepError when DIR holds a study of another spec."""
        import optuna

        self.dir.mkdir(parents=True, exist_ok=True)
        self.storage = open_storage(self.url, self._on_stale)
        study = optuna.create_study(
            study_name=self.study_name, storage=self.storage, direction="minimize", load_if_exists=True
        )
        mine = self.plan.fingerprint()
        theirs = study.user_attrs.get("fingerprint")
        if theirs is None:
            study.set_user_attr("fingerprint", mine)
            study.set_user_attr("objective", self.plan.spec.objective)
            study.set_user_attr("parameters", sorted(self.plan.spec.parameters))
        elif theirs != mine:
            raise SweepError(
                f"--dir: the study {self.study_name!r} in {self.url} was made from another spec (its base, "
                "parameters, method or objective differ); give the sweep another --dir or name, or run "
                "the spec it was made from"
            )
        study.set_user_attr("trials", self.budget)
        return study

    def _load(self) -> optuna.Study:
        import optuna

        s = self.plan.spec
        pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
        if s.pruning.enabled or self.opt.prune:
            pruner = optuna.pruners.MedianPruner(
                n_startup_trials=s.pruning.startup_trials, n_warmup_steps=s.pruning.warmup_steps
            )
        return optuna.load_study(study_name=self.study_name, storage=self.storage, pruner=pruner)

    def _sampler(self, n: int) -> optuna.samplers.BaseSampler:
        """A fresh sampler per trial; random and TPE draws are seeded with the spec's seed plus the trial
        count, so a continued sweep does not repeat the first run's draws."""
        import optuna

        seed = self.plan.spec.seed + n
        method = self.plan.spec.method
        if method == "grid":
            # The grid's order is shuffled by the seed, and a trial's grid point is an index into it: every
            # worker and every run must use the same seed.
            return optuna.samplers.GridSampler(self.plan.grid, seed=self.plan.spec.seed)
        if method == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        # TPE models the results after some random trials: about a third of the budget, 2 to 10.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, self.budget // 3)))

    def _may_ask(self, trials: list[optuna.trial.FrozenTrial]) -> bool:
        from optuna.trial import TrialState

        if any(t.state == TrialState.WAITING for t in trials):
            return True  # a queued retry takes the place of the failed trial it repeats
        return sum(counts_toward_budget(t) for t in trials) < self.budget

    # ---- interrupted trials ---------------------------------------------------------------------------
    @staticmethod
    def _retry(user_attrs: dict[str, Any], params: dict[str, Any], reason: str) -> tuple[bool, str]:
        """Whether an interrupted trial runs again, and its reason (saying so when it does not)."""
        retries = int(user_attrs.get("retries", 0) or 0)
        again = bool(params) and retries < MAX_RETRIES
        if not again and params:
            reason += f"; interrupted {retries + 1} times, not run again"
        return again, reason

    def requeue(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str) -> None:
        """Mark an interrupted trial failed with the reason and queue its parameters again. A trial that
        is already failed (told by its own worker) has its reason and 'counted' set already."""
        import optuna
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        again, reason = self._retry(trial.user_attrs, trial.params, reason)
        if trial.state == TrialState.RUNNING:
            # Optuna's public storage API on the study's own backend: the study's cache re-reads
            # unfinished trials from it, so its next ask sees this.
            storage = self.storage
            tid = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(study.study_name), trial.number
            )
            try:
                storage.set_trial_user_attr(tid, "reason", reason)
                storage.set_trial_user_attr(tid, "counted", not again and bool(trial.params))
                storage.set_trial_state_values(tid, TrialState.FAIL)
            except UpdateFinishedTrialError:
                return  # its worker, or another one, got there first
        if again:
            retries = int(trial.user_attrs.get("retries", 0) or 0)
            # Optuna's heartbeat fails a stale trial before we hear of it, and a finished trial takes no
            # more attributes: its reason rides on the retry (`sweep status` shows it at the failed one).
            attrs = {"retry_of": trial.number, "retries": retries + 1, "retry_reason": reason}
            # As Optuna's RetryHeartbeatStaleTrialCallback does: the same parameters and system attributes
            # (the grid sampler's grid point), queued; the next ask runs it.
            study.add_trial(
                optuna.trial.create_trial(
                    state=TrialState.WAITING,
                    params=dict(trial.params),
                    distributions=dict(trial.distributions),
                    user_attrs=attrs,
                    system_attrs=dict(trial.system_attrs),
                )
            )

    def _fail_orphans(self, study: optuna.Study) -> None:
        """Running trials of this host whose worker is gone (their lock file is free): failed, re-queued."""
        from optuna.trial import TrialState

        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            run_dir = t.user_attrs.get("run_dir")
            if t.user_attrs.get("host") != self.host or not isinstance(run_dir, str):
                continue
            run = Path(run_dir)
            if is_held(run / OWNER_FILE):
                continue
            if runs.is_locked(run):  # a trainer that outlived its sweep (no PDEATHSIG here): stop it
                runs.request_stop(run)
            worker = t.user_attrs.get("worker", "?")
            status = runs.read_status(run)
            where = f" at step {status.step}" if status else ""
            self.requeue(study, t, f"interrupted{where}: its sweep worker (pid {worker}) ended while it ran")
            self.opt.log(
                f"trial {t.number}: its sweep worker ended while it ran; marked failed, queued again"
            )

    def _on_stale(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna's heartbeat found a trial of a silent worker (another machine) and marked it failed."""
        host = trial.user_attrs.get("host", "another machine")
        self.requeue(study, trial, f"interrupted: its worker on {host} sent no heartbeat for {GRACE_S} s")
        self.opt.log(f"trial {trial.number}: its worker on {host} went silent; marked failed, queued again")

    # ---- the loop -------------------------------------------------------------------------------------
    def run(self, study: optuna.Study | None = None) -> int:
        """Run trials until the budget is reached, the sweep is stopped or trials keep failing; 0 on a
        normal end, 1 when failures stopped it."""
        study = study or self.open()
        slots: list[str | None] = list(self.opt.gpus) or [None]
        threads = [
            threading.Thread(target=self._slot, args=(slot,), name=f"sweep slot {slot}", daemon=True)
            for slot in slots
        ]
        self._log_plan(study)
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(self.opt.poll_s)
            if runs.stop_requested(self.dir) and not self.stop_event.is_set():
                self.opt.log("stop requested: stopping the running trials (each saves a checkpoint)")
                self.stop_event.set()
        runs.clear_stop_request(self.dir)
        from flux2_lora.experiments.status import write_best

        best = write_best(self.dir, study)
        if best is not None:
            self.opt.log(
                f"best so far: trial {best['number']}, {best['objective']} {best['value']:.6g} → {best['file']}"
            )
        if self.error:
            self.opt.log(f"error: {self.error}")
            return 1
        return 0

    def stop(self) -> None:
        self.stop_event.set()

    def _log_plan(self, study: optuna.Study) -> None:
        done = sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False))
        where = f"GPUs {', '.join(self.opt.gpus)}" if self.opt.gpus else "one trial at a time"
        self.opt.log(
            f"sweep {self.study_name!r}: {self.plan.spec.method}, {self.budget} trials ({done} already), "
            f"objective {self.plan.spec.objective}; {where}; memory vetted against {self.opt.target.name}"
        )

    def _slot(self, slot: str | None) -> None:
        try:
            study = self._load()
            failures = 0
            while not self.stop_event.is_set():
                outcome = self._one_trial(study, slot)
                if outcome is None:
                    return
                failures = failures + 1 if outcome == "failed" else 0
                if failures >= self.plan.spec.max_failures:
                    self.error = (
                        f"{failures} trials failed in a row; fix the cause (see each trial's reason in "
                        "`flux2-lora sweep status`) and run the command again to continue"
                    )
                    self.stop_event.set()
        except Exception as e:  # a storage that went away, a full disk: the worker ends with the reason
            self.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            self.stop_event.set()

    def _one_trial(self, study: optuna.Study, slot: str | None) -> str | None:
        """Ask, run and tell one trial; None when the budget is reached. Returns the trial's outcome."""
        from optuna.trial import TrialState

        ask = FileLock(self.dir / ASK_LOCK_FILE)
        ask.acquire()
        box: dict[str, Any] = {}
        try:
            self._fail_orphans(study)
            trials = study.get_trials(deepcopy=False)
            if not self._may_ask(trials):
                return None
            study.sampler = self._sampler(len(trials))
            study.optimize(
                lambda t: self._objective(t, slot, ask, box),
                n_trials=1,
                catch=(TrialFailed, TrialInterrupted),
                gc_after_trial=False,
            )
        finally:
            ask.release()
            # Held until the trial's state is told, so no other worker takes it for an orphan.
            if box.get("owner") is not None:
                box["owner"].release()
        number = box.get("number")
        if number is None:
            return "failed"
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
        if box.get("interrupted"):
            self.requeue(study, trial, str(box["interrupted"]))
            return None
        self.ran.append(number)
        if trial.state == TrialState.COMPLETE:
            return "complete"
        return "pruned" if trial.state == TrialState.PRUNED else "failed"

    def _objective(self, trial: optuna.Trial, slot: str | None, ask: FileLock, box: dict[str, Any]) -> float:
        import optuna

        number = trial.number
        box["number"] = number
        run_dir = self.dir / trial_dir_name(number)
        run_dir.mkdir(parents=True, exist_ok=True)
        box["owner"] = owner = FileLock(run_dir / OWNER_FILE)
        owner.acquire()
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("host", self.host)
        trial.set_user_attr("worker", os.getpid())
        trial.set_user_attr("gpu", slot or "")
        ask.release()  # recorded: other workers can now tell this trial is alive
        params = self._suggest(trial)
        label = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
        try:
            value = self._train(trial, params, run_dir, slot, label)
        except optuna.TrialPruned as e:
            trial.set_user_attr("reason", str(e))
            self.opt.log(f"trial {number} ({label}): pruned: {e}")
            raise
        except TrialFailed as e:
            trial.set_user_attr("reason", str(e))
            trial.set_user_attr("counted", True)
            self.opt.log(f"trial {number} ({label}): failed: {e}")
            raise
        except TrialInterrupted as e:
            again, reason = self._retry(trial.user_attrs, params, str(e))
            trial.set_user_attr("reason", reason)
            trial.set_user_attr("counted", not again)
            box["interrupted"] = reason
            self.opt.log(f"trial {number} ({label}): {reason}")
            raise
        return value

    def _suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for path, p in self.plan.spec.parameters.items():
            kind = self.plan.kinds[path]
            if p.values is not None:
                out[path] = trial.suggest_categorical(path, list(p.values))
            elif kind == "int":
                step = int(p.step or 1)
                out[path] = trial.suggest_int(path, int(p.low or 0), int(p.high or 0), step=step, log=p.log)
            else:
                out[path] = trial.suggest_float(
                    path, float(p.low or 0), float(p.high or 0), step=p.step, log=p.log
                )
        return out

    def _config(self, params: dict[str, Any], run_dir: Path, slot: str | None) -> Any:
        import optuna

        data = self.plan.config_for(params, run_dir)
        if slot is not None and str((data.get("model") or {}).get("device", "")).startswith("cuda:"):
            data["model"]["device"] = "cuda"  # the trial sees only its own GPU (CUDA_VISIBLE_DEVICES)
        config, issues = validate_dict(data)
        if config is None:
            shown = "; ".join(str(i) for i in issues if i.level == "error")
            raise optuna.TrialPruned(f"invalid config: {shown}")
        return config

    def _train(
        self, trial: optuna.Trial, params: dict[str, Any], run_dir: Path, slot: str | None, label: str
    ) -> float:
        import optuna

        config = self._config(params, run_dir, slot)
        fit = vet(config, self.opt.target)
        trial.set_user_attr("memory", fit.to_dict())
        if not fit.fits:
            raise optuna.TrialPruned(f"does not fit: {fit.reason}")
        cfg_file = run_dir / runs.CONFIG_FILE
        save_config(config, cfg_file)
        runs.clear_stop_request(run_dir)  # left by an earlier, stopped trainer
        env = dict(os.environ)
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        on = f"GPU {slot}" if slot is not None else "this machine"
        self.opt.log(f"trial {trial.number} ({label}): training on {on} in {run_dir}")
        started = time.time()
        proc = start_process(self.opt.trainer(cfg_file), env=env, output=run_dir / TRIAL_OUT)
        try:
            reported = self._watch(trial, proc, run_dir)
        finally:
            if proc.poll() is None:  # only on an error of this process: never leave a trainer behind
                proc.kill()
                proc.wait()
        trial.set_user_attr("seconds", round(time.time() - started, 1))
        status = runs.read_status(run_dir)
        if self.stop_event.is_set() and (status is None or status.state != RunState.FINISHED):
            raise TrialInterrupted("stopped with the sweep; it runs again when the sweep continues")
        if proc.returncode != 0 or status is None or status.state != RunState.FINISHED:
            raise TrialFailed(self._failure(proc.returncode, status, run_dir))
        if self._pruning:
            # The whole curve of a finished trial is what later trials are compared with.
            self._report(trial, runs.read_eval(run_dir)[reported:])
        value, kind, step = objective_value(run_dir, self.plan.spec.objective)
        if not math.isfinite(value):
            raise TrialFailed(f"its {kind.split()[0]} is {value} (training diverged)")
        trial.set_user_attr("objective", kind)
        trial.set_user_attr("objective_step", step)
        self.opt.log(f"trial {trial.number} ({label}): {kind} {value:.6g}")
        return value

    @property
    def _pruning(self) -> bool:
        return self.plan.spec.pruning.enabled or self.opt.prune

    @staticmethod
    def _report(trial: optuna.Trial, records: list[dict[str, Any]]) -> None:
        for rec in records:
            if math.isfinite(rec["eval_loss"]):
                trial.report(rec["eval_loss"], rec["step"])

    def _watch(self, trial: optuna.Trial, proc: subprocess.Popen[bytes], run_dir: Path) -> int:
        """Wait for the trainer; feed its eval losses to the pruner; stop it when pruned or stopped.
        Returns how many evaluations were reported."""
        import optuna

        reported = 0
        while proc.poll() is None:
            if self.stop_event.wait(self.opt.poll_s):
                self._stop_trainer(proc, run_dir)
                return reported
            if not self._pruning:
                continue
            evals = runs.read_eval(run_dir)
            self._report(trial, evals[reported:])
            if len(evals) > reported:
                reported = len(evals)
                if trial.should_prune():
                    last = evals[-1]
                    self._stop_trainer(proc, run_dir)
                    raise optuna.TrialPruned(
                        f"eval loss {last['eval_loss']:.6g} at step {last['step']} is worse than the median of "
                        "earlier trials at that step (pruning on)"
                    )
        return reported

    @staticmethod
    def _stop_trainer(proc: subprocess.Popen[bytes], run_dir: Path) -> None:
        """Ask the trainer to checkpoint and exit (stop file + SIGTERM); SIGKILL after STOP_TIMEOUT_S."""
        runs.write_stop_request(run_dir)
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @staticmethod
    def _failure(code: int | None, status: runs.RunStatus | None, run_dir: Path) -> str:
        if status is not None and (status.error or status.message) and status.state != RunState.FINISHED:
            text = status.error or status.message
        else:
            lines = [ln for ln in runs.log_tail(run_dir, 5).splitlines() if ln.strip()]
            if not lines:
                tail = (
                    (run_dir / TRIAL_OUT).read_bytes()[-4000:].decode("utf-8", "replace")
                    if (run_dir / TRIAL_OUT).is_file()
                    else ""
                )
                lines = [ln for ln in tail.splitlines() if ln.strip()]
            text = lines[-1] if lines else "no output"
        return f"the trainer exited with {code}: {text[:500]}"


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
