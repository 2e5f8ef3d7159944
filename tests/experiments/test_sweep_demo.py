"""Sweeps of the embedded demo with the real trainer, through the CLI (issue 13's Done-when): a 2×2 grid
finishes with 4 trials and a best one, also when the sweep is SIGKILLed mid-trial and run again; a trial
that cannot fit is pruned with its reason; two worker processes share one SQLite study.

Synchronised on files (the trainer's hold point writes .held-step; a run's status and lock), never on time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from flux2_lora import runs
from flux2_lora.config.io import load_config
from flux2_lora.hooks import HOLD_ENV
from tests.helpers import cli, wait_for

pytest.importorskip("optuna")

TINY = {
    "training.max_steps": 3,
    "training.warmup_steps": 0,
    "validation.enabled": False,
    "output.checkpoint_every": 0,
    "logging.tensorboard": False,
    "logging.log_every": 1,
}


def write_spec(folder: Path, parameters: dict[str, Any], **extra: Any) -> Path:
    spec = {"base": {"presets": ["quickstart"], "set": TINY}, "parameters": parameters, **extra}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


GRID = {"lora.rank": {"values": [4, 8]}, "training.learning_rate": {"values": [0.001, 0.005]}}


def status(sweep_dir: Path) -> dict[str, Any]:
    proc = cli("sweep", "status", str(sweep_dir), "--json", check=True)
    return json.loads(proc.stdout)


def start_sweep(spec: Path, sweep_dir: Path, *args: str, hold: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, **({HOLD_ENV: hold} if hold else {})}
    return subprocess.Popen(
        [sys.executable, "-m", "flux2_lora.cli", "sweep", str(spec), "--dir", str(sweep_dir), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def stop(*procs: subprocess.Popen[str]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate()


def assert_finished_grid(report: dict[str, Any], sweep_dir: Path) -> None:
    done = [t for t in report["trials"] if t["state"] == "finished"]
    assert len(done) == 4
    assert {(t["params"]["lora.rank"], t["params"]["training.learning_rate"]) for t in done} == {
        (4, 0.001), (4, 0.005), (8, 0.001), (8, 0.005)
    }  # fmt: skip
    for t in done:
        run = Path(t["run_dir"])
        assert run.parent == sweep_dir.resolve() and run.name == f"trial-{t['number']:04d}"
        assert runs.read_status(run).state == "finished"  # type: ignore[union-attr]
        assert (run / runs.LORA_FILE).is_file()
        # The objective is the eval loss when the run has one, else the final training loss, and says so.
        if runs.read_eval(run):
            assert t["objective"] == "eval_loss" and t["value"] == runs.read_eval(run)[-1]["eval_loss"]
        else:
            assert t["objective"] == "train_loss (no eval loss in this run)"
            assert t["value"] == runs.read_jsonl(run / runs.METRICS_FILE)[-1]["loss"]
    best = report["best"]
    assert best["value"] == min(t["value"] for t in done)
    config, _ = load_config(best["file"])  # best.yaml is a config the trainer takes
    assert config.lora.rank == best["params"]["lora.rank"]
    assert config.output.dir == str(sweep_dir.resolve() / "best")


@pytest.mark.slow
def test_a_2x2_grid_sweep_of_the_demo_finishes_with_4_trials_and_a_best_one(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, GRID, method="grid", objective="eval_loss")
    d = tmp_path / "sweep"
    proc = cli("sweep", str(spec), "--dir", str(d), check=True)
    assert "largest trial" in proc.stdout and "best so far: trial" in proc.stdout
    report = status(d)
    assert report["counted"] == 4 and report["budget"] == 4
    assert_finished_grid(report, d)
    listed = json.loads(cli("runs", str(d), "--json", check=True).stdout)  # trials are ordinary runs
    assert len(listed) == 4
    again = cli("sweep", str(spec), "--dir", str(d), check=True)  # continuing a finished sweep runs nothing
    assert "training on" not in again.stdout and len(status(d)["trials"]) == 4


@pytest.mark.slow
def test_a_sweep_killed_in_the_middle_goes_on_when_run_again(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, GRID, method="grid")
    d = tmp_path / "sweep"
    first = start_sweep(spec, d, hold="step@2")  # every trainer of this sweep holds at its second step
    try:
        held = d / "trial-0000" / ".held-step"
        assert wait_for(held.exists, timeout=180), first.stdout
        first.send_signal(signal.SIGKILL)
        first.wait()
        # The trainer dies with its sweep (PR_SET_PDEATHSIG): its lock on the run is free.
        assert wait_for(lambda: not runs.is_locked(d / "trial-0000"), timeout=30)
    finally:
        stop(first)
    before = status(d)
    assert [t["state"] for t in before["trials"]] == ["interrupted"]
    second = cli("sweep", str(spec), "--dir", str(d), check=True)
    assert "trial 0: its sweep worker ended while it ran; marked failed, queued again" in second.stdout
    report = status(d)
    killed = report["trials"][0]
    assert killed["state"] == "failed" and killed["retried_as"] is not None
    assert killed["reason"].startswith("interrupted at step 2: its sweep worker (pid ")
    retry = report["trials"][killed["retried_as"]]
    assert retry["params"] == killed["params"] and retry["state"] == "finished"
    assert report["counted"] == 4 and report["counts"] == {"failed": 1, "finished": 4}
    assert_finished_grid(report, d)


def test_a_trial_that_cannot_fit_the_gpu_is_pruned_with_its_reason(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, {"dataset.resolution": {"values": [64, 2048]}}, method="grid")
    d = tmp_path / "sweep"
    proc = cli("sweep", str(spec), "--dir", str(d), "--gpu", "1.5", check=True)
    assert "largest trial (dataset.resolution=2048)" in proc.stdout and "does not fit" in proc.stdout
    by_res = {t["params"]["dataset.resolution"]: t for t in status(d)["trials"]}
    assert by_res[64]["state"] == "finished"
    pruned = by_res[2048]
    assert pruned["state"] == "pruned" and pruned["value"] is None
    assert pruned["reason"].startswith("does not fit: needs 2.") and "has 1.5 GiB" in pruned["reason"]
    assert not (Path(pruned["run_dir"]) / runs.STATUS_FILE).exists()  # never started: no OOM to wait for


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        {"lora.rank": {"low": 4, "high": 8, "step": 4}, "training.learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}},
        method="random",
        trials=4,
    )  # fmt: skip
    d = tmp_path / "sweep"
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    a = start_sweep(spec, d, "--storage", storage, hold="step@2")  # A's trainers hold at step 2
    b: subprocess.Popen[str] | None = None
    try:
        assert wait_for(lambda: any(d.glob("trial-*/.held-step")), timeout=180)
        held_by_a = next(d.glob("trial-*/.held-step")).parent
        b = start_sweep(spec, d, "--storage", storage)
        # B runs trials while A's is held: wait until one of them has finished.
        assert wait_for(
            lambda: any(
                (s := runs.read_status(r)) is not None and s.state == "finished"
                for r in d.glob("trial-*")
                if r != held_by_a
            ),
            timeout=180,
        )

        def release_and_done() -> bool:
            for h in d.glob("trial-*/.held-step"):
                (h.parent / ".release-step").write_text("go")
            return a.poll() is not None and b is not None and b.poll() is not None

        assert wait_for(release_and_done, timeout=300)
        assert a.returncode == 0 and b.returncode == 0
    finally:
        stop(a, *([b] if b else []))
    report = json.loads(cli("sweep", "status", str(d), "--storage", storage, "--json", check=True).stdout)
    trials = report["trials"]
    assert [t["state"] for t in trials] == ["finished"] * 4  # the budget of 4 across both workers
    numbers = [t["number"] for t in trials]
    assert sorted(numbers) == [0, 1, 2, 3] and len({t["run_dir"] for t in trials}) == 4
    assert {t["worker"] for t in trials} == {a.pid, b.pid}  # each worker ran trials
    assert not (d / "study.db").exists()  # the study lives in the given storage
