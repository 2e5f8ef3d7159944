"""The training queue and "sample now / save now" through the UI's API (gradio_client), as a script would
drive them: Add to queue is judged as Start is, jobs run one after the other, a job never starts while
another trainer runs, cancelling a running job stops its trainer, and a running run samples or saves at
its current step when asked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from flux2_lora import runs
from flux2_lora.hooks import HOLD_ENV
from flux2_lora.job_queue import Queue
from tests.helpers import wait_for
from tests.webui.conftest import tiny_run_config

if TYPE_CHECKING:
    from gradio_client import Client

pytest.importorskip("gradio_client")


@pytest.fixture(autouse=True)
def stop_queue() -> Iterator[None]:
    """No job of a test is left for the next one: every job is cancelled and the runner stopped."""
    yield
    from flux2_lora.webui import ops

    ops.stop_runners(cancel=True)


def jobs(client: Client) -> dict[str, dict[str, Any]]:
    return {j["id"]: j for j in client.predict(api_name="/queue_list")["jobs"]}


def status(client: Client, run_dir: str) -> dict[str, Any]:
    return dict(client.predict(run_dir, api_name="/run_status"))


def test_add_to_queue_is_refused_as_start_is(client: Client) -> None:
    bad = {"lora": {"rank": 0}, "output": {"dir": "runs/q-bad"}}
    q = client.predict(bad, False, "", api_name="/queue_add")
    s = client.predict(bad, "", False, "", api_name="/start_run")
    assert not q["ok"] and q["errors"] == s["errors"], (q, s)
    # A run the estimate says does not fit the GPU: refused unless "start anyway", with Start's words.
    dev = client.predict({}, "dev", api_name="/apply_preset")["config"]
    dev["output"]["dir"] = "runs/q-dev"
    q = client.predict(dev, False, "24", api_name="/queue_add")
    s = client.predict(dev, "", False, "24", api_name="/start_run")
    assert not q["ok"] and q["blockers"] and q["errors"] == s["errors"], q
    assert not [j for j in jobs(client).values() if j["run_dir"].endswith(("q-bad", "q-dev"))]
    out = client.predict({"output": {"dir": "/etc/evil"}}, False, "", api_name="/queue_add")
    assert not out["ok"] and out["errors"][0]["field"] == "output.dir"


def test_queue_list_and_cancel_of_a_queued_job(client: Client, ui_runs: Path) -> None:
    # Queued on disk as `flux2-lora queue add` does (no runner is started by that): the UI lists it.
    cfg_yaml = "model: {path: demo}\ndataset: {path: demo}\n"
    job = Queue(ui_runs.resolve()).add(cfg_yaml, ui_runs.resolve() / "q-listed")
    listed = jobs(client)
    assert listed[job.id]["state"] == "queued" and listed[job.id]["name"] == "q-listed"
    r = client.predict(job.id, api_name="/queue_cancel")
    assert r["ok"] and r["state"] == "cancelled", r
    assert jobs(client)[job.id]["state"] == "cancelled"
    again = client.predict(job.id, api_name="/queue_cancel")
    assert not again["ok"] and "cancelled already" in again["message"]
    unknown = client.predict("../../etc", api_name="/queue_cancel")
    assert not unknown["ok"] and "not a job id" in unknown["message"]


def test_the_queue_is_read_from_disk_and_set_right_after_a_crash(client: Client, ui_runs: Path) -> None:
    """What a UI reopened after a crash shows: the jobs on disk, one its dead worker left "running" queued
    again (the runner of a reopened UI starts nothing until asked)."""
    from flux2_lora.job_queue import JobState

    q = Queue(ui_runs.resolve())
    cfg_yaml = "model: {path: demo}\ndataset: {path: demo}\n"
    waiting = q.add(cfg_yaml, ui_runs.resolve() / "q-waiting-on-disk")
    crashed = q.add(cfg_yaml, ui_runs.resolve() / "q-crashed")

    def left_running(j: Any) -> None:
        j.state, j.pid = JobState.RUNNING, 999999

    q.update(crashed.id, left_running)
    listed = client.predict(api_name="/queue_list")
    assert not listed["worker"] and not listed["runner"]
    by_id = {j["id"]: j for j in listed["jobs"]}
    assert by_id[waiting.id]["state"] == "queued"
    assert by_id[crashed.id]["state"] == "queued" and "interrupted" in by_id[crashed.id]["message"]
    for job in (waiting, crashed):
        assert client.predict(job.id, api_name="/queue_cancel")["ok"]


def test_ask_is_refused_for_a_run_that_is_not_running(client: Client, ui_runs: Path) -> None:
    r = client.predict(str(ui_runs / "never-ran"), "sample", api_name="/ask_run")
    assert not r["ok"] and "running run" in r["message"]
    r = client.predict("/etc", "save", api_name="/ask_run")
    assert not r["ok"]
    r = client.predict(str(ui_runs / "never-ran"), "delete", api_name="/ask_run")
    assert not r["ok"] and "what" in r["message"]


@pytest.mark.slow
def test_two_queued_runs_run_one_after_the_other(client: Client) -> None:
    added = []
    for name in ("q-first", "q-second"):
        r = client.predict(tiny_run_config(name, steps=4), False, "", api_name="/queue_add")
        assert r["ok"], r
        added.append(r)
    assert [a["position"] for a in added] == [1, 2]
    again = client.predict(tiny_run_config("q-second", steps=4), False, "", api_name="/queue_add")
    assert not again["ok"] and again["errors"][0]["field"] == "output.dir"  # already a job's output
    first, second = (a["job_id"] for a in added)
    seen: list[tuple[str, str]] = []

    def both_done() -> bool:
        j = jobs(client)
        seen.append((j[first]["state"], j[second]["state"]))
        return j[first]["state"] == j[second]["state"] == "done"

    assert wait_for(both_done, timeout=900, interval=0.2), seen[-1]
    assert ("running", "running") not in seen
    assert all(a == "done" for a, b in seen if b == "running"), seen
    j = jobs(client)
    assert j[second]["started_at"] >= j[first]["ended_at"]
    for a in added:
        s = status(client, a["run_dir"])
        assert s["state"] == "finished" and s["step"] == 4, s


@pytest.mark.slow
def test_a_job_waits_for_a_started_run_and_cancel_stops_a_running_job(client: Client) -> None:
    # A run started with Start trains: a queued job does not start beside it.
    long = tiny_run_config("q-started", steps=5000)
    long["validation"]["enabled"] = False
    long["output"]["checkpoint_every"] = 0
    started = client.predict(long, "", False, "", api_name="/start_run")
    assert started["ok"], started
    assert wait_for(lambda: status(client, started["run_dir"])["step"] >= 1, 300, 0.2)
    cfg = tiny_run_config("q-waiting", steps=5000)
    cfg["validation"]["enabled"] = False
    cfg["output"]["checkpoint_every"] = 0
    q = client.predict(cfg, False, "", api_name="/queue_add")
    assert q["ok"], q
    step = status(client, started["run_dir"])["step"]
    assert wait_for(lambda: status(client, started["run_dir"])["step"] >= step + 3, 300, 0.2)
    assert jobs(client)[q["job_id"]]["state"] == "queued"  # three steps later, still waiting
    assert client.predict(started["run_dir"], 60.0, api_name="/stop_run")["ok"]
    # The started run ended: the job runs; cancelled while it trains, its trainer checkpoints and stops.
    assert wait_for(lambda: status(client, q["run_dir"]).get("step", 0) >= 1, 300, 0.2)
    assert jobs(client)[q["job_id"]]["state"] == "running"
    r = client.predict(q["job_id"], api_name="/queue_cancel")
    assert r["ok"] and "stop requested" in r["message"], r
    assert wait_for(lambda: jobs(client)[q["job_id"]]["state"] == "cancelled", 300, 0.2)
    s = status(client, q["run_dir"])
    assert s["state"] == "stopped" and s["checkpoints"], s
    assert not runs.is_locked(q["run_dir"])  # no trainer left


@pytest.mark.slow
def test_sample_now_and_save_now_act_at_the_current_step(
    client: Client, ui_runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_run_config("ask-run", steps=2000)
    cfg["validation"]["every_n_steps"] = 1000  # no scheduled sample near the asked one
    cfg["output"]["checkpoint_every"] = 0
    run_dir = ui_runs / "ask-run"
    monkeypatch.setenv(HOLD_ENV, "step@3")  # the UI runs in this process: its trainer inherits this
    r = client.predict(cfg, "", False, "", api_name="/start_run")
    assert r["ok"], r
    monkeypatch.delenv(HOLD_ENV)
    assert wait_for((run_dir / ".held-step").exists, 300, 0.1)  # held after step 3, status written
    for what in ("sample", "save"):
        asked = client.predict(r["run_dir"], what, api_name="/ask_run")
        assert asked["ok"] and asked["asked_at_step"] == 3, asked
    assert not [s for s in runs.read_jsonl(run_dir / runs.SAMPLES_INDEX) if s.get("step") == 3]
    (run_dir / ".release-step").write_text("")

    def acknowledged() -> bool:
        acks = (status(client, r["run_dir"]).get("extra") or {}).get("on_demand") or {}
        return {"sample", "save"} <= set(acks)

    assert wait_for(acknowledged, 300, 0.2)
    acks = status(client, r["run_dir"])["extra"]["on_demand"]
    assert acks["sample"]["step"] == acks["save"]["step"] == 3, acks
    assert [s for s in runs.read_jsonl(run_dir / runs.SAMPLES_INDEX) if s.get("step") == 3]
    assert (run_dir / runs.CHECKPOINTS_DIR / f"{runs.CHECKPOINT_PREFIX}3").is_dir()
    assert client.predict(r["run_dir"], 60.0, api_name="/stop_run")["ok"]
    assert wait_for(lambda: status(client, r["run_dir"])["final"], 120, 0.2)
