"""Multi-GPU in the UI: the distributed fields in the form, the per-GPU estimate for N GPUs, Start of a
multi-process run, and every rank's memory in the monitor (through the API, as a script would)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.webui.conftest import tiny_run_config

pytest.importorskip("gradio_client")


def test_the_form_has_the_distributed_fields() -> None:
    from flux2_lora.webui.schema import SECTION_TITLES, form_fields

    fields = {s.path: s for s in form_fields()}
    for key in ("strategy", "num_processes", "num_machines", "machine_rank", "main_process_ip"):
        assert f"distributed.{key}" in fields
    assert fields["distributed.strategy"].choices == ("ddp", "fsdp")
    assert SECTION_TITLES["distributed"] == "GPUs and machines"


def test_the_estimate_is_per_gpu_for_n_gpus(client: Any) -> None:
    from flux2_lora.webui import render

    dev = client.predict({}, "dev", api_name="/apply_preset")["config"]
    one = client.predict(dev, "24", api_name="/estimate")["report"]
    dev["distributed"] = {"strategy": "fsdp", "num_processes": 4}
    r = client.predict(dev, "24", api_name="/estimate")
    rep = r["report"]
    assert rep["num_gpus"] == 4 and rep["strategy"] == "fsdp"
    assert rep["gpu"]["label"] == "4 × 24 GB (RTX 3090/4090, A10)"
    assert (
        rep["phase_components"]["training"]["weights"] < one["phase_components"]["training"]["weights"] / 3.9
    )
    head = render.verdict_html(r, "1")
    assert "per GPU, 4 × 24 GB" in head and 'data-gpus="4"' in head and "FSDP shards" in head
    assert "| 4 × 80 GB (A100/H100 80GB) |" in render.breakdown_markdown(r)
    # A field error in the section is marked like any other.
    dev["distributed"] = {"num_machines": 2}
    bad = client.predict(dev, "24", api_name="/estimate")
    assert not bad["can_start"] and bad["errors"][0]["field"] == "distributed.main_process_ip"


def test_start_runs_two_processes_and_the_monitor_shows_every_rank(client: Any, ui_runs: Path) -> None:
    from flux2_lora.webui.tabs.runs import ranks_frame

    cfg = tiny_run_config("two-ranks", steps=4)
    cfg["validation"]["enabled"] = False
    cfg["distributed"] = {"strategy": "fsdp", "num_processes": 2}
    r = client.predict(cfg, "", api_name="/start_run")
    assert r["ok"], r
    last: dict = {}

    def finished() -> bool:
        last.update(client.predict(r["run_dir"], api_name="/run_status"))
        return bool(last.get("final"))

    assert wait_for(finished, timeout=300, interval=0.5), last
    assert last["state"] == "finished" and last["extra"]["num_processes"] == 2, (
        last.get("message"),
        last.get("log"),
    )
    assert [x["rank"] for x in last["ranks"]] == [0, 1] and all(x["step"] == 4 for x in last["ranks"])
    frame = ranks_frame(last["ranks"])
    assert list(frame["rank"]) == [0, 1] and frame["GPU peak allocated (GiB)"].tolist() == ["–", "–"]
