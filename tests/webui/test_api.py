"""The UI's API endpoints driven through gradio_client, as a script or another program would."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from flux2_lora.webui.actions import API
from tests.helpers import wait_for
from tests.webui.conftest import tiny_run_config

if TYPE_CHECKING:  # the test skips where these are not installed
    from gradio_client import Client


pytest.importorskip("gradio_client")


def test_every_action_is_a_named_endpoint(client: Client) -> None:
    names = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for name in (*API, "upload_dataset", "download_lora", "download_file"):
        assert f"/{name}" in names


def test_estimate_and_gpu_verdict(client: Client) -> None:
    r = client.predict({}, "", api_name="/estimate")
    assert r["ok"] and r["available"] and r["can_start"], r
    rep = r["report"]
    assert rep["total_gib"] > 0 and rep["gpu"]["verdict"] in ("fits", "tight", "does_not_fit")
    bigger = client.predict({"lora": {"rank": 128}}, "", api_name="/estimate")["report"]
    assert bigger["trainable_params"] > rep["trainable_params"]


def test_a_config_that_does_not_fit_gets_fixes(client: Client) -> None:
    dev = client.predict({}, "dev", api_name="/apply_preset")["config"]
    r = client.predict(dev, "24", api_name="/estimate")
    assert r["report"]["gpu"]["verdict"] == "does_not_fit"
    recs = client.predict(dev, "24", api_name="/recommend")
    assert recs and all(x["overrides"] for x in recs)


def test_invalid_input_gets_field_errors(client: Client) -> None:
    bad = {"lora": {"rank": 0}, "dataset": {"resolution": 100}, "training": {"optimizer": "nope"}}
    r = client.predict(bad, "", api_name="/estimate")
    assert {"lora.rank", "dataset.resolution", "training.optimizer"} <= {e["field"] for e in r["errors"]}
    assert not r["can_start"]
    r = client.predict(bad, "", api_name="/start_run")
    assert not r["ok"] and {"lora.rank", "dataset.resolution"} <= {e["field"] for e in r["errors"]}
    r = client.predict({"output": {"dir": "/etc/evil"}}, "", api_name="/start_run")
    assert (
        not r["ok"] and r["errors"][0]["field"] == "output.dir" and "--runs-dir" in r["errors"][0]["message"]
    )


def test_unknown_model_gets_no_estimate_and_no_start(client: Client) -> None:
    cfg = {"model": {"path": "someone/some-model"}}
    r = client.predict(cfg, "", api_name="/estimate")
    assert not r["available"] and not r["can_start"] and "unknown model" in r["message"]
    assert r["errors"][0]["field"].startswith("model.")  # model.variant: the one that would name it
    s = client.predict({**tiny_run_config("unknown-model"), **cfg}, "", api_name="/start_run")
    assert not s["ok"] and s["errors"][0]["field"].startswith("model.")


def test_warnings_come_with_fixes(client: Client) -> None:
    cfg = client.predict({}, "klein-4b", api_name="/apply_preset")["config"]
    cfg["training"]["learning_rate"] = 5e-4
    r = client.predict(cfg, "", api_name="/estimate")
    lr = [w for w in r["warnings"] if w["field"] == "training.learning_rate"]
    assert lr and lr[0]["fix"] and lr[0]["overrides"] == {"training.learning_rate": 1e-4}


def test_presets_show_what_they_change_and_do_not_stack_unasked(client: Client) -> None:
    low = client.predict({"model": {"dtype": "float32"}}, "Low VRAM", False, api_name="/apply_preset")
    assert low["ok"] and low["config"]["memory"]["quantization"] == "nf4"
    changed = {c["field"]: c for c in low["changes"]}
    assert changed["memory.quantization"]["old"] == "none" and changed["memory.quantization"]["new"] == "nf4"
    cfg = low["config"]
    assert "mixed_precision" not in cfg["training"]  # it follows model.dtype, not a field of its own
    # Character after Low VRAM starts from the defaults: no NF4, offload or accumulation 8 left behind ...
    char = client.predict(cfg, "character", False, api_name="/apply_preset")
    assert char["config"]["memory"]["quantization"] == "none"
    assert char["config"]["training"]["gradient_accumulation_steps"] == 1
    assert {"memory.quantization", "memory.cpu_offload", "lora.rank"} <= {c["field"] for c in char["changes"]}
    # ... unless asked to stack; model presets always go on top of the current values.
    stacked = client.predict(cfg, "character", True, api_name="/apply_preset")["config"]
    assert stacked["memory"]["quantization"] == "nf4" and stacked["lora"]["rank"] == 32
    dev = client.predict(stacked, "dev", False, api_name="/apply_preset")["config"]
    assert dev["model"]["variant"] == "dev" and dev["memory"]["quantization"] == "nf4"
    assert client.predict({}, "no-such", False, api_name="/apply_preset")["ok"] is False


def test_dataset_check(client: Client, tmp_path: Path) -> None:
    r = client.predict(
        {"dataset": {"path": "demo", "resolution": 64, "bucketing": True, "trigger_word": "zzz"}},
        api_name="/check_dataset",
    )
    assert r["ok"] and r["num_images"] == r["report"]["num_items"] > 0 and r["upscaled"] == []
    assert r["buckets"] and r["trigger"]  # 'zzz' appears in no caption
    big = client.predict({"dataset": {"path": "demo", "resolution": 512}}, api_name="/check_dataset")
    assert len(big["upscaled"]) == big["num_images"]  # 128 px demo images at 512 px
    missing = client.predict({"dataset": {"path": str(tmp_path / "nope")}}, api_name="/check_dataset")
    assert not missing["ok"] and missing["message"]


def test_templates_are_read_from_disk(client: Client, ui_runs: Path) -> None:
    assert client.predict({"lora": {"rank": 24}}, "mine", api_name="/save_template")["ok"]
    r = client.predict("mine", api_name="/load_template")
    assert r["ok"] and r["config"]["lora"]["rank"] == 24
    assert not client.predict({}, "../x", api_name="/save_template")["ok"]
    # A template written by someone else (the CLI, another tab) shows up without a restart.
    (ui_runs / "templates" / "from-disk.yaml").write_text("lora:\n  rank: 12\n")
    assert "from-disk" in client.predict(api_name="/list_templates")


@pytest.mark.slow
def test_demo_run_to_finished_download_and_generate(client: Client, ui_runs: Path) -> None:
    cfg = tiny_run_config("api-run")
    cfg["validation"].update(eval_images=2, eval_every=3)
    r = client.predict(cfg, "", api_name="/start_run")
    assert r["ok"], r
    run_dir = r["run_dir"]
    assert Path(run_dir).parent == ui_runs.resolve()
    busy = client.predict(tiny_run_config("api-run"), "", api_name="/start_run")
    assert not busy["ok"] and busy["errors"][0]["field"] == "output.dir"
    last: dict = {}

    def finished() -> bool:
        last.update(client.predict(run_dir, api_name="/run_status"))
        return bool(last.get("final"))

    assert wait_for(finished, timeout=300, interval=0.5), last
    assert last["state"] == "finished", last
    assert last["step"] == 6 and last["metrics"] and last["samples"]
    assert [e["step"] for e in last["evals"]] == [0, 3, 6]  # the eval loss the monitor plots
    runs = client.predict(api_name="/list_runs")
    assert any(x["run_dir"] == run_dir and x["lora"] for x in runs)
    filedata = client.predict(run_dir, api_name="/download_lora")
    body = httpx.get(filedata["url"], timeout=30)
    assert body.status_code == 200 and len(body.content) == Path(last["lora"]).stat().st_size
    # files outside the runs folder are not served
    assert client.predict("/etc/passwd", api_name="/download_file") is None
    # Test LoRA: the run's own settings by default, and a prompt starting with '-' is a prompt.
    d = client.predict(last["lora"], api_name="/run_defaults")
    assert (d["steps"], d["guidance"], d["resolution"]) == (2, 1.0, 64)
    g = client.predict(last["lora"], "--help -a red circle", 1.0, 0, 0, 0, -1.0, api_name="/generate")
    assert g["ok"], g
    assert Path(g["image"]).is_file() and (g["steps"], g["resolution"], g["guidance"]) == (2, 64, 1.0)


@pytest.mark.slow
def test_stop_run(client: Client) -> None:
    cfg = tiny_run_config("api-stop", steps=5000)
    cfg["validation"]["enabled"] = False
    cfg["output"]["checkpoint_every"] = 0
    r = client.predict(cfg, "", api_name="/start_run")
    assert r["ok"], r
    assert wait_for(
        lambda: client.predict(r["run_dir"], api_name="/run_status")["state"] == "training", 180, 0.2
    )
    assert client.predict(r["run_dir"], 60.0, api_name="/stop_run")["ok"]
    s: dict = {}

    def final() -> bool:
        s.update(client.predict(r["run_dir"], api_name="/run_status"))
        return bool(s["final"])

    assert wait_for(final, 120, 0.2), s
    assert s["state"] == "stopped" and s["checkpoints"], s
