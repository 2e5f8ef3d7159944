"""The API's estimate and validate give what assess() gives, for the table of tests/test_assess.py:
in process (Actions) and through gradio_client (the served UI), the same errors, warnings, verdict and
host RAM; start_run refuses the same errors in the same words and a red verdict unless start_anyway."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from flux2_lora.assess import WITHOUT_ENV, assess, environment
from tests.test_assess import CASES, _overrides, _summary, composed
from tests.webui.conftest import tiny_run_config

if TYPE_CHECKING:
    from gradio_client import Client

IDS = [c[0] for c in CASES]


@pytest.fixture
def without(request: pytest.FixtureRequest) -> Iterator[None]:
    """The case's missing packages, for assess() here and for the served UI (the same process)."""
    os.environ[WITHOUT_ENV] = request.param
    environment.cache_clear()
    yield
    os.environ.pop(WITHOUT_ENV)
    environment.cache_clear()


def _case(presets: list[str], overrides: list[str], gpu: str, folder: Path) -> tuple[dict[str, Any], Any]:
    folder.mkdir(parents=True, exist_ok=True)
    return composed(presets, _overrides(overrides, folder), gpu)


@pytest.mark.parametrize(
    ("name", "presets", "overrides", "gpu", "fields", "without"),
    CASES,
    ids=IDS,
    indirect=["without"],
)
def test_the_api_agrees_with_the_assessment(
    client: Client,
    ui_data: Path,
    ui_runs: Path,
    name: str,
    presets: list[str],
    overrides: list[str],
    gpu: str,
    fields: set[str],
    without: None,
) -> None:
    from flux2_lora.webui.actions import Actions
    from flux2_lora.webui.paths import AppPaths

    config, a = _case(presets, overrides, gpu, ui_data / f"case-{IDS.index(name)}")
    assert {e.field for e in a.errors} >= fields and (fields or a.ok), a.errors
    reference = _summary(a.to_dict())
    acts = Actions(AppPaths.create(ui_runs, [ui_data]))
    for where, est, val in (
        ("in process", acts.estimate(config, gpu), acts.validate(config)),
        (
            "served",
            client.predict(config, gpu, api_name="/estimate"),
            client.predict(config, api_name="/validate"),
        ),
    ):
        assert _summary(est) == reference, where
        assert est["can_start"] == a.to_dict()["can_start"], where
        assert _steady(est["blockers"]) == _steady(a.blockers), where
        # validate is about the default GPU (as `flux2-lora validate` without --gpu): the same errors
        assert sorted((e["field"], e["message"]) for e in val["errors"]) == reference["errors"], where
        assert val["ok"] == a.ok and (val["config"] is not None) == a.ok, where


def _steady(blockers: list[str]) -> list[str]:
    """Blockers without the free host RAM of the moment (other processes change it between two calls)."""
    return [re.sub(r"[0-9.]+ GiB available", "N GiB available", b) for b in blockers]


def test_start_refuses_the_errors_in_the_assessments_words(client: Client, ui_data: Path) -> None:
    cfg = tiny_run_config("assess-missing")
    missing = ui_data / "not-there"
    cfg["dataset"]["path"] = str(missing)
    est = client.predict(cfg, "", api_name="/estimate")
    assert not est["ok"] and "dataset.path" in {e["field"] for e in est["errors"]}
    r = client.predict(cfg, "", True, "", api_name="/start_run")  # start anyway never overrides errors
    assert not r["ok"] and r["errors"] == est["errors"] and r["start_reason"] == est["start_reason"]


def test_a_red_verdict_starts_only_when_asked(client: Client) -> None:
    cfg = tiny_run_config("assess-anyway")
    # The demo model fits every class; a GPU of 0.5 GiB (a guess the user made) does not fit it.
    est = client.predict(cfg, "0.5", api_name="/estimate")
    assert est["ok"] and est["verdict"] == "does_not_fit" and est["blockers"], est
    refused = client.predict(cfg, "", False, "0.5", api_name="/start_run")
    assert not refused["ok"] and "does not fit" in refused["errors"][0]["message"]
    assert "Start anyway" in refused["errors"][0]["message"]
    old = client.predict(cfg, "", api_name="/start_run")  # the old two-argument call still works
    assert old["ok"], old
    client.predict(old["run_dir"], 30.0, api_name="/stop_run")


def test_recommendation_labels_say_what_the_re_estimate_says() -> None:
    from flux2_lora.assess import Environment
    from flux2_lora.webui import configs, render

    env = Environment(cuda=True, packages=frozenset({"bitsandbytes", "torchao"}))
    cfg = configs.apply_preset(configs.initial_dict(), "dev")["config"]
    cfg = configs.apply_preset(cfg, "low-vram", stack=True)["config"]
    gpu = "24"
    recs = assess(cfg, gpu=gpu, env=env).report["recommendations"]  # type: ignore[index]
    assert recs
    for rec in recs:
        after = assess(
            configs.apply_overrides(cfg, rec["overrides"]), gpu=gpu, env=env, recommendations=False
        )
        said = render.recommendation_label(rec)
        assert ("still does not fit" in said) == (after.verdict == "does_not_fit"), (said, after.verdict)
