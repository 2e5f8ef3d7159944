"""Stop pressed while the trainer is still starting stops it (issue 10, point 13), with the real trainer.

The trainer is held before its first line of Python by a gate (a ``sitecustomize`` on its PYTHONPATH that
waits for a file), so "still starting" is a state the test controls rather than a race it hopes to win.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flux2_lora.webui.actions import Actions
from flux2_lora.webui.paths import AppPaths
from tests.helpers import wait_for
from tests.webui.conftest import tiny_run_config

GATE_ENV = "FLUX2_LORA_TEST_START_GATE"


@pytest.fixture
def gated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Child Pythons wait until the returned file exists."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, time\n"
        f"gate = os.environ.get({GATE_ENV!r})\n"
        "while gate and not os.path.exists(gate):\n"
        "    time.sleep(0.05)\n"
    )
    gate = tmp_path / "go"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv(GATE_ENV, str(gate))
    return gate


def _long_run(name: str) -> dict:
    cfg = tiny_run_config(name, steps=100_000)
    cfg["validation"]["enabled"] = False
    cfg["output"]["checkpoint_every"] = 0
    return cfg


@pytest.mark.timeout(120)  # it waits on a child process: never longer than this
def test_stop_while_starting_stops_the_trainer_once_it_is_up(tmp_path: Path, gated: Path) -> None:
    acts = Actions(AppPaths.create(tmp_path / "runs", [tmp_path]))
    r = acts.start_run(_long_run("starting"))
    assert r["ok"], r
    assert acts.run_status(r["run_dir"])["state"] == "starting"
    stop = acts.stop_run(r["run_dir"], 600)
    assert stop["ok"], stop
    assert acts.run_status(r["run_dir"])["state"] == "stopping"
    gated.write_text("go")  # now the trainer starts for real, after the stop file was written
    snap: dict = {}

    def final() -> bool:
        snap.update(acts.run_status(r["run_dir"]))
        return bool(snap["final"])

    assert wait_for(final, timeout=300, interval=0.2), snap
    assert snap["state"] == "stopped", snap
    assert 0 < snap["step"] < 100_000 and snap["checkpoints"]


@pytest.mark.timeout(120)  # it waits on a child process: never longer than this
def test_stop_while_starting_ends_a_trainer_that_never_comes_up(tmp_path: Path, gated: Path) -> None:
    acts = Actions(AppPaths.create(tmp_path / "runs", [tmp_path]))
    r = acts.start_run(_long_run("never-up"))
    assert r["ok"], r
    assert acts.stop_run(r["run_dir"], 1.0)["ok"]  # the gate stays shut: the force-stop ends it
    snap: dict = {}

    def final() -> bool:
        snap.update(acts.run_status(r["run_dir"]))
        return bool(snap["final"])

    assert wait_for(final, timeout=60, interval=0.1), snap
    assert snap["state"] == "stopped" and "before the trainer was up" in snap["message"], snap
