"""The sweep driver with a stand-in trainer (fake_trainer.py): objective choice, failures, pruning on eval
loss, memory vetting and stopping, each in about a second. The real trainer's sweeps are in
test_sweep_demo.py."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from flux2_lora import runs
from flux2_lora.assess import Environment, environment
from flux2_lora.experiments.spec import build_plan, parse_spec
from flux2_lora.experiments.sweep import Options, Sweep, trial_dir_name
from flux2_lora.experiments.vet import Target
from flux2_lora.memory import Gpu
from tests.helpers import wait_for

optuna = pytest.importorskip("optuna")
FAKE = Path(__file__).with_name("fake_trainer.py")
TINY = {
    "training.max_steps": 4,
    "training.warmup_steps": 0,
    "validation.enabled": False,
    "output.checkpoint_every": 0,
    "logging.tensorboard": False,
}


def make_sweep(tmp_path: Path, spec: dict[str, Any], plan: dict[str, Any], **opts: Any) -> Sweep:
    full = {"base": {"presets": ["quickstart"], "set": TINY}, **spec}
    lines: list[str] = []
    opts.setdefault("poll_s", 0.02)
    options = Options(
        tmp_path / "sweep",
        trainer=lambda cfg: [sys.executable, str(FAKE), str(cfg), json.dumps(plan)],
        log=lines.append,
        **opts,
    )
    sweep = Sweep(build_plan(parse_spec(full)), options)
    sweep.lines = lines  # type: ignore[attr-defined]
    return sweep


def trials(sweep: Sweep) -> list[Any]:
    return optuna.load_study(study_name=sweep.study_name, storage=sweep.url).get_trials()


def test_eval_loss_is_the_objective_when_the_run_has_it_else_the_training_loss_and_a_crash_is_counted(
    tmp_path: Path,
) -> None:
    plan = {
        "0": {"evals": [2.0, 0.7], "loss": 1.5},
        "1": {"then": "crash"},
        "2": {"loss": 0.9},
    }
    sweep = make_sweep(
        tmp_path, {"parameters": {"training.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
                   "method": "random", "trials": 3}, plan
    )  # fmt: skip
    assert sweep.run() == 0
    t = trials(sweep)
    assert [x.state.name for x in t] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert t[0].value == 0.7 and t[0].user_attrs["objective"] == "eval_loss"
    assert t[0].user_attrs["objective_step"] == 2
    assert t[2].value == 0.9 and t[2].user_attrs["objective"] == "train_loss (no eval loss in this run)"
    assert "boom" in t[1].user_attrs["reason"] and t[1].user_attrs["counted"] is True
    for x in t:  # each trial is an ordinary run directory with the config it was given
        run = Path(x.user_attrs["run_dir"])
        assert run.name == trial_dir_name(x.number) and (run / runs.CONFIG_FILE).is_file()
    assert (sweep.dir / "best.yaml").read_text().startswith("# best trial 0 ")


def test_train_loss_objective_ignores_eval(tmp_path: Path) -> None:
    sweep = make_sweep(
        tmp_path,
        {"parameters": {"lora.rank": {"values": [4]}}, "method": "grid", "objective": "train_loss"},
        {"0": {"evals": [0.1], "loss": 1.25}},
    )
    assert sweep.run() == 0
    (t,) = trials(sweep)
    assert t.value == 1.25 and t.user_attrs["objective"] == "train_loss"


def test_a_trial_worse_than_the_median_on_eval_loss_is_pruned_and_stopped(tmp_path: Path) -> None:
    plan = {
        "0": {"evals": [1.0, 0.8, 0.6]},
        "1": {"evals": [1.1, 0.9, 0.7]},
        "2": {"evals": [3.0, 2.9], "then": "wait_stop"},  # waits until the driver stops it
    }
    spec = {
        "parameters": {"training.learning_rate": {"values": [1e-3, 2e-3, 3e-3]}},
        "method": "grid",
        "pruning": {"enabled": True, "startup_trials": 2},
    }
    sweep = make_sweep(tmp_path, spec, plan)
    assert sweep.run() == 0
    t = trials(sweep)
    assert [x.state.name for x in t] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert "worse than the median" in t[2].user_attrs["reason"]
    assert (Path(t[2].user_attrs["run_dir"]) / runs.STOP_FILE).is_file()  # the trainer was asked to stop
    assert runs.read_status(t[2].user_attrs["run_dir"]).state == "stopped"  # type: ignore[union-attr]


def test_without_pruning_a_poor_trial_runs_to_its_end(tmp_path: Path) -> None:
    plan = {"0": {"evals": [1.0]}, "1": {"evals": [1.1]}, "2": {"evals": [3.0, 2.9]}}
    spec = {"parameters": {"training.learning_rate": {"values": [1e-3, 2e-3, 3e-3]}}, "method": "grid"}
    sweep = make_sweep(tmp_path, spec, plan)
    assert sweep.run() == 0
    assert [x.state.name for x in trials(sweep)] == ["COMPLETE"] * 3


def test_a_trial_that_cannot_fit_is_pruned_with_the_reason_and_the_sweep_goes_on(tmp_path: Path) -> None:
    spec = {"parameters": {"dataset.resolution": {"values": [64, 2048]}}, "method": "grid", "seed": 3}
    sweep = make_sweep(tmp_path, spec, {}, target=Target(Gpu("1 GiB test card", 1.0)))
    assert sweep.run() == 0
    by_res = {x.params["dataset.resolution"]: x for x in trials(sweep)}
    big, small = by_res[2048], by_res[64]
    assert big.state.name == "PRUNED" and small.state.name == "COMPLETE"
    reason = big.user_attrs["reason"]
    assert reason.startswith("does not fit: needs 2.") and "1 GiB test card has 1.0 GiB" in reason
    assert "would fit with" in reason  # the memory model's cheapest fix
    assert big.user_attrs["memory"]["verdict"] == "does_not_fit"
    assert not (Path(big.user_attrs["run_dir"]) / runs.STATUS_FILE).exists()  # never launched


def test_a_stopped_sweep_requeues_the_running_trial_and_continuing_finishes_it(tmp_path: Path) -> None:
    spec = {"parameters": {"lora.rank": {"values": [4, 8]}}, "method": "grid"}
    sweep = make_sweep(tmp_path, spec, {"0": {"then": "wait_stop"}})
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(sweep.run()))
    worker.start()
    try:
        assert wait_for(lambda: (sweep.dir / trial_dir_name(0) / ".waiting").exists(), timeout=60)
        sweep.stop()
    finally:
        worker.join(60)
    assert result == [0], (sweep.error, sweep.lines)
    first = trials(sweep)
    assert [x.state.name for x in first] == ["FAIL", "WAITING"]
    assert "stopped with the sweep" in first[0].user_attrs["reason"]
    assert first[1].user_attrs["retry_of"] == 0
    again = make_sweep(tmp_path, spec, {})
    assert again.run() == 0, (again.error, again.lines)
    t = trials(again)
    assert [x.state.name for x in t] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert t[1].params == first[0].params  # the queued retry ran the interrupted trial's parameters
    assert {x.params["lora.rank"] for x in t[1:]} == {4, 8}


def test_the_study_refuses_another_spec(tmp_path: Path) -> None:
    from flux2_lora.experiments.sweep import SweepError

    make_sweep(tmp_path, {"parameters": {"lora.rank": {"values": [4]}}, "method": "grid"}, {}).open()
    other = make_sweep(tmp_path, {"parameters": {"lora.rank": {"values": [8]}}, "method": "grid"}, {})
    with pytest.raises(SweepError, match="another spec"):
        other.open()


def test_budget_extends_with_more_trials(tmp_path: Path) -> None:
    spec = {"parameters": {"lora.rank": {"low": 4, "high": 16, "step": 4}}, "method": "random", "trials": 1}
    assert make_sweep(tmp_path, spec, {}).run() == 0
    assert make_sweep(tmp_path, spec, {}, trials=3).run() == 0
    t = trials(make_sweep(tmp_path, spec, {}))
    assert len(t) == 3 and all(x.params["lora.rank"] in (4, 8, 12, 16) for x in t)
    assert len({x.number for x in t}) == 3


def test_gpus_run_one_trial_each_in_parallel(tmp_path: Path) -> None:
    spec = {
        "base": {"presets": ["quickstart"], "set": {**TINY, "model.device": "cuda:1"}},
        "parameters": {"lora.rank": {"values": [4, 8]}},
        "method": "grid",
    }
    plan = {"0": {"then": "wait_peer"}, "1": {"then": "wait_peer"}}
    sweep = Sweep(
        build_plan(parse_spec(spec)),
        Options(
            tmp_path / "sweep",
            gpus=["0", "1"],
            # Two CUDA GPUs, as far as the assessment of each trial knows (the trainer here is a fake).
            target=Target(None, Environment(cuda=True, packages=environment().packages)),
            trainer=lambda cfg: [sys.executable, str(FAKE), str(cfg), json.dumps(plan)],
            poll_s=0.02,
            log=lambda line: None,
        ),
    )
    assert sweep.run() == 0, sweep.error
    t = trials(sweep)
    assert [x.state.name for x in t] == ["COMPLETE", "COMPLETE"]  # each waited for the other: in parallel
    seen = {(Path(x.user_attrs["run_dir"]) / ".started").read_text() for x in t}
    assert seen == {"0", "1"} and {x.user_attrs["gpu"] for x in t} == {"0", "1"}
    for x in t:  # each trial sees one GPU, as cuda
        config = (Path(x.user_attrs["run_dir"]) / runs.CONFIG_FILE).read_text()
        assert "device: cuda\n" in config
