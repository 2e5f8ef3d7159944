"""The UI's API endpoints driven through gradio_client, as a script or another program would."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from flux2_lora.config import DTYPE_TO_MIXED
from tests.helpers import wait_for
from tests.webui.conftest import tiny_run_config

pytest.importorskip("gradio_client")


def test_endpoints_are_named(client) -> None:  # type: ignore[no-untyped-def]
    names = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for name in (
        "estimate",
        "apply_preset",
        "check_dataset",
        "start_run",
        "run_status",
        "stop_run",
        "list_runs",
        "generate",
        "download_lora",
    ):
        assert f"/{name}" in names


def test_estimate_and_gpu_verdict(client) -> None:  # type: ignore[no-untyped-def]
    r = client.predict({}, "", api_name="/estimate")
    assert r["ok"] and r["available"], r
    rep = r["report"]
    assert rep["total_gib"] > 0 and rep["gpu"]["verdict"] in ("fits", "tight", "does_not_fit")
    bigger = client.predict({"lora": {"rank": 128}}, "", api_name="/estimate")["report"]
    assert bigger["trainable_params"] > rep["trainable_params"]


def test_invalid_input_gets_field_errors(client) -> None:  # type: ignore[no-untyped-def]
    bad = {"lora": {"rank": 0}, "dataset": {"resolution": 100}, "training": {"optimizer": "nope"}}
    r = client.predict(bad, "", api_name="/estimate")
    paths = {e["field"] for e in r["errors"]}
    assert {"lora.rank", "dataset.resolution", "training.optimizer"} <= paths
    r = client.predict(bad, "", api_name="/start_run")
    assert not r["ok"] and {"lora.rank", "dataset.resolution"} <= {e["field"] for e in r["errors"]}
    # a run folder outside the runs dir is refused (the UI serves only that folder)
    r = client.predict({"output": {"dir": "/etc/evil"}}, "", api_name="/start_run")
    assert not r["ok"] and r["errors"][0]["field"] == "output.dir"


def test_presets_merge_into_current_values(client) -> None:  # type: ignore[no-untyped-def]
    r = client.predict({"lora": {"rank": 8}, "model": {"dtype": "float32"}}, "Fast", api_name="/apply_preset")
    assert r["ok"]
    cfg = r["config"]
    assert cfg["model"]["dtype"] == "float32" and cfg["training"]["mixed_precision"] == "no"  # follows dtype
    low = client.predict(cfg, "Low VRAM", api_name="/apply_preset")["config"]
    assert low != cfg and low["training"]["mixed_precision"] == DTYPE_TO_MIXED.get(
        low["model"]["dtype"], "auto"
    )
    r2 = client.predict(cfg, "style", api_name="/apply_preset")
    assert r2["ok"] and r2["config"] != cfg
    assert client.predict({}, "no-such", api_name="/apply_preset")["ok"] is False


def test_dataset_check(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = client.predict(
        {"dataset": {"path": "demo", "resolution": 64, "bucketing": True, "trigger_word": "zzz"}},
        api_name="/check_dataset",
    )
    assert r["ok"] and r["report"]["num_items"] > 0
    assert r["buckets"] and r["trigger"]  # 'zzz' appears in no caption
    missing = client.predict({"dataset": {"path": str(tmp_path / "nope")}}, api_name="/check_dataset")
    assert not missing["ok"] and missing["message"]


def test_templates_roundtrip(client) -> None:  # type: ignore[no-untyped-def]
    assert client.predict({"lora": {"rank": 24}}, "mine", api_name="/save_template")["ok"]
    r = client.predict("mine", api_name="/load_template")
    assert r["ok"] and r["config"]["lora"]["rank"] == 24
    assert not client.predict({}, "../x", api_name="/save_template")["ok"]


def test_demo_run_to_finished_and_download(client, ui_runs: Path) -> None:  # type: ignore[no-untyped-def]
    r = client.predict(tiny_run_config("api-run"), "", api_name="/start_run")
    assert r["ok"], r
    run_dir = r["run_dir"]
    assert Path(run_dir).parent == ui_runs.resolve()
    busy = client.predict(tiny_run_config("api-run"), "", api_name="/start_run")
    assert not busy["ok"] and busy["errors"][0]["field"] == "output.dir"
    last: dict = {}

    def finished() -> bool:
        last.update(client.predict(run_dir, api_name="/run_status"))
        return bool(last.get("final"))

    assert wait_for(finished, timeout=240, interval=1.0), last
    assert last["state"] == "finished", last
    assert last["step"] == 10 and last["metrics"] and last["samples"]
    runs = client.predict(api_name="/list_runs")
    assert any(x["run_dir"] == run_dir and x["lora"] for x in runs)
    filedata = client.predict(run_dir, api_name="/download_lora")
    body = httpx.get(filedata["url"], timeout=30)
    assert body.status_code == 200 and len(body.content) == Path(last["lora"]).stat().st_size
    # files outside the runs folder are not served
    assert client.predict("/etc/passwd", api_name="/download_file") is None
    # the Test LoRA tab's endpoint
    g = client.predict(last["lora"], "a red circle, sks style", 1.0, 2, 0, 64, 1.0, api_name="/generate")
    assert g["ok"], g
    assert Path(g["image"]).is_file()


def test_stop_run(client) -> None:  # type: ignore[no-untyped-def]
    cfg = tiny_run_config("api-stop")
    cfg["training"]["max_steps"] = 5000
    cfg["validation"]["enabled"] = False
    r = client.predict(cfg, "", api_name="/start_run")
    assert r["ok"], r
    assert wait_for(
        lambda: client.predict(r["run_dir"], api_name="/run_status")["state"] == "training", 120, 0.5
    )
    assert client.predict(r["run_dir"], 20.0, api_name="/stop_run")["ok"]
    deadline = time.time() + 60
    while time.time() < deadline:
        s = client.predict(r["run_dir"], api_name="/run_status")
        if s["final"]:
            break
        time.sleep(0.5)
    assert s["state"] == "stopped", s
