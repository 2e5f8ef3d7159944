"""Every API endpoint checks the types of its arguments (issue 18, point 12): a config that is not a
mapping, a GPU that is no class and no positive finite size, a NUL byte or control characters in a
prompt are answered with an error naming the argument, through the API and on a direct call alike."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from flux2_lora.webui.actions import API, Actions
from flux2_lora.webui.paths import AppPaths
from flux2_lora.webui.requests import RequestError
from tests.webui.conftest import tiny_run_config

if TYPE_CHECKING:
    from gradio_client import Client

pytest.importorskip("gradio_client")

CONFIG_ENDPOINTS = ("estimate", "check_dataset", "start_run", "preflight", "autotune", "validate")
BAD_GPUS = ("-5", "inf", "nan", "0", "banana", "-inf", "1e999")


@pytest.fixture
def actions(tmp_path: Path) -> Actions:
    return Actions(AppPaths.create(tmp_path / "runs", [tmp_path]))


@pytest.mark.parametrize("name", CONFIG_ENDPOINTS)
@pytest.mark.parametrize("config", [[1, 2], "model: demo", 7, None])
def test_a_config_must_be_a_mapping(client: Client, name: str, config: Any) -> None:
    r = client.predict(config, api_name=f"/{name}")
    assert r["ok"] is False and r["errors"][0]["field"] == "config", r
    assert "mapping" in r["errors"][0]["message"]


@pytest.mark.parametrize("gpu", BAD_GPUS)
def test_a_gpu_must_be_known_or_a_positive_finite_size(client: Client, gpu: str) -> None:
    for name in ("estimate", "autotune", "sweep_plan"):
        args = ({"model": {"path": "demo"}}, gpu) if name != "sweep_plan" else ({"parameters": {}}, gpu)
        r = client.predict(*args, api_name=f"/{name}")
        assert r["ok"] is False and r["errors"][0]["field"] == "gpu", (name, r)
        assert "report" not in r
    with pytest.raises(Exception, match="gpu"):
        client.predict({"model": {"path": "demo"}}, gpu, api_name="/recommend")


def test_known_gpus_still_work(client: Client) -> None:
    for gpu, gib in (("24", 23.99), ("H100", 79.65), ("1.5", 1.5), ("", None)):
        r = client.predict({"model": {"path": "demo"}}, gpu, api_name="/estimate")
        assert r["ok"] and r["available"], (gpu, r)
        assert gib is None or r["report"]["gpu"]["gib"] == gib


@pytest.mark.parametrize("prompt", ["a\x00b", "line\nbreak", "bell\x07", "esc\x1b[31m"])
def test_control_characters_in_prompts_are_refused(actions: Actions, prompt: str) -> None:
    r = actions.generate("runs/x/pytorch_lora_weights.safetensors", prompt)
    assert not r["ok"] and r["field"] == "prompt", r
    cfg = tiny_run_config("ctl")
    cfg["validation"]["prompts"] = ["fine", prompt]
    for result in (actions.start_run(cfg), actions.preflight(cfg)):
        assert not result["ok"] and result["errors"][0]["field"] == "validation.prompts[1]", result
    assert not (actions.paths.runs / "ctl").exists()
    spec = {"parameters": {"validation.prompts": {"values": ["ok", prompt]}}, "method": "grid"}
    r = actions.sweep_plan(spec, "")
    assert not r["ok"] and r["errors"][0]["field"] == "parameters.validation.prompts.values[1]", r


def test_wrong_types_of_every_argument_are_named(actions: Actions) -> None:
    cases = {
        ("generate", "scale"): ("x", "p", "big"),
        ("generate", "steps"): ("x", "p", 1.0, 2.5),
        ("stop_run", "timeout_s"): ("r", float("nan")),
        ("compare_runs", "run_dirs"): ("a",),
        ("start_run", "resume"): ({}, 5),
        ("start_sweep", "name"): ({}, ["x"]),
        ("run_status", "run_dir"): ({"a": 1},),
        ("apply_preset", "stack"): ({}, "fast", "yes"),
    }
    for (name, field), args in cases.items():
        r = getattr(actions, name)(*args)
        assert r["ok"] is False and r["errors"][0]["field"] == field, (name, r)
    with pytest.raises(RequestError, match="config"):
        actions.timestep_density([])  # type: ignore[arg-type]
    assert actions.generate("x", "p", 1.0, 3.0)["message"] != ""  # type: ignore[arg-type]  # 3.0 is the whole number 3


def test_every_endpoint_is_checked() -> None:
    assert all(hasattr(getattr(Actions, name), "__wrapped__") for name in API)
