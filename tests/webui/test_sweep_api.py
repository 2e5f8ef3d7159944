"""Sweeps and auto-tune through the UI's API (gradio_client), as a script would drive them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for

pytest.importorskip("gradio_client")
pytest.importorskip("optuna")

TINY_SET = {
    "training.max_steps": 3,
    "training.warmup_steps": 0,
    "validation.enabled": False,
    "output.checkpoint_every": 0,
    "logging.tensorboard": False,
}


def spec(**parameters: Any) -> dict[str, Any]:
    return {
        "base": {"presets": ["quickstart"], "set": dict(TINY_SET)},
        "parameters": parameters or {"lora.rank": {"values": [4, 8]}},
        "method": "grid",
    }


def test_sweep_fields_come_from_the_schema(client: Any) -> None:
    fields = {f["path"]: f for f in client.predict(api_name="/sweep_fields")}
    assert fields["lora.rank"]["kind"] == "int" and "output.dir" not in fields


def test_the_plan_counts_trials_and_vets_the_largest(client: Any) -> None:
    r = client.predict(
        spec(**{"lora.rank": {"values": [4, 8]}, "dataset.resolution": {"values": [64, 2048]}}),
        "1.5",
        api_name="/sweep_plan",
    )
    assert r["ok"] and r["trials"] == 4 and r["grid_size"] == 4
    big = r["largest"]
    assert big["params"]["dataset.resolution"] == 2048 and big["verdict"] == "does_not_fit"
    r = client.predict(spec(**{"lora.rnak": {"values": [4]}}), "", api_name="/sweep_plan")
    assert not r["ok"] and r["errors"][0]["field"] == "parameters.lora.rnak"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"base": {"config": "/etc/passwd"}}, "base.config"),
        ({"base": {"template": "../../x"}}, "base.template"),
        ({"base": {"set": {"dataset.path": "/etc"}}}, "base.set.dataset.path"),
        ({"base": {"set": {"output.dir": "/tmp/elsewhere"}}}, "base.set.output.dir"),
    ],
)
def test_hostile_specs_are_refused_by_field(client: Any, change: dict[str, Any], field: str) -> None:
    s = {**spec(), **change}
    r = client.predict(s, "", api_name="/sweep_plan")
    assert not r["ok"] and r["errors"][0]["field"] == field, r
    r = client.predict(s, "x", "", api_name="/start_sweep")
    assert not r["ok"] and r["errors"][0]["field"] == field


def test_a_sweep_folder_stays_in_the_runs_folder(client: Any) -> None:
    for name in ("../outside", "/tmp/outside", "uploads", ""):
        r = client.predict(spec(), name, "", api_name="/start_sweep")
        assert not r["ok"] and r["errors"][0]["field"] == "name", (name, r)


@pytest.mark.slow
def test_a_sweep_started_through_the_api_runs_its_trials(client: Any, ui_runs: Path) -> None:
    r = client.predict(spec(), "api-sweep", "", api_name="/start_sweep")
    assert r["ok"] and r["trials"] == 2 and Path(r["sweep_dir"]) == ui_runs / "api-sweep"
    again = client.predict(spec(), "api-sweep", "", api_name="/start_sweep")
    assert not again["ok"] and "is running" in again["errors"][0]["message"]

    def done() -> bool:
        s = client.predict("api-sweep", api_name="/sweep_status")
        return s["ok"] and not s["running"] and s["counts"].get("finished") == 2

    assert wait_for(done, timeout=300, interval=0.5)
    s = client.predict("api-sweep", api_name="/sweep_status")
    assert {t["params"]["lora.rank"] for t in s["trials"]} == {4, 8}
    assert s["best"]["file"] == str(ui_runs / "api-sweep" / "best.yaml")
    assert "api-sweep" in client.predict(api_name="/list_sweeps")
    other = client.predict(spec(**{"lora.rank": {"values": [16]}}), "api-sweep", "", api_name="/start_sweep")
    assert not other["ok"] and "another spec" in other["errors"][0]["message"]


def test_autotune_proposes_from_the_forms_dataset(client: Any) -> None:
    form = {"model": {"path": "demo"}, "dataset": {"path": "demo"}, "output": {"dir": "runs/tuned"}}
    r = client.predict(form, "24", api_name="/autotune")
    assert r["ok"] and r["kind"] == "style", r
    fields = {c["field"]: c for c in r["choices"]}
    assert fields["dataset.trigger_word"]["value"] == "sks" and fields["lora.rank"]["reason"]
    assert r["config"]["model"]["path"] == "demo" and r["config"]["output"]["dir"] == "runs/tuned"  # kept
    assert r["config"]["dataset"]["path"] == "demo"
    v = client.predict(r["config"], api_name="/validate")
    assert v["ok"], v["errors"]
    refused = client.predict({"dataset": {"path": "/etc"}}, "", api_name="/autotune")
    assert not refused["ok"] and refused["field"] == "dataset.path" and "--data-dir" in refused["message"]
