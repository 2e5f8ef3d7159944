"""`flux2-lora estimate`: the JSON report's shape, errors without tracebacks, fixes that round-trip."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flux2_lora.cli import main

COMPONENTS = {"weights", "lora", "gradients", "optimizer", "activations", "text_encoder", "vae", "overhead"}


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert main(["estimate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_report_has_phases_components_verdicts_and_fixes(capsys: pytest.CaptureFixture[str]) -> None:
    r = _json(capsys, "--preset", "dev", "--gpu", "24")
    assert set(r["phases"]) == {"caching", "training", "sampling"}
    assert set(r["components"]) == COMPONENTS
    assert sum(r["components"].values()) == pytest.approx(r["total_gib"])
    assert r["allocated_peak_gib"] == max(r["phases"].values()) < r["total_gib"]
    assert r["trainable_params"] > 0
    sizes = {round(g["gib"]) for g in r["gpus"]}
    assert {24, 32, 40, 48, 80, 94, 140, 178} <= sizes
    assert r["gpu"]["verdict"] == "does_not_fit" and r["recommendations"]
    for rec in r["recommendations"]:
        assert {"title", "overrides", "saves_gib", "total_gib_after", "fits_after"} <= set(rec)


def test_a_fix_applied_with_set_fits(capsys: pytest.CaptureFixture[str]) -> None:
    r = _json(capsys, "--preset", "klein-9b", "--gpu", "24", "--set", "training.batch_size=2")
    fix = r["recommendations"][0]
    sets = [a for k, v in fix["overrides"].items() for a in ("--set", f"{k}={v}")]
    after = _json(capsys, "--preset", "klein-9b", "--gpu", "24", "--set", "training.batch_size=2", *sets)
    assert after["gpu"]["verdict"] == "fits" and after["recommendations"] == []


def test_config_errors_exit_2_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "--set", "lora.rank=0"]) == 2
    err = capsys.readouterr().err
    assert "lora.rank" in err and "Traceback" not in err
    assert main(["estimate", "--gpu", "a-card-nobody-makes"]) == 2


@pytest.mark.slow
def test_trace_reports_the_traced_peak_beside_the_estimate(capsys: pytest.CaptureFixture[str]) -> None:
    r = _json(capsys, "--preset", "klein-4b", "--trace", "--set", "dataset.resolution=512")
    t = r["trace"]["training_peak"]
    assert abs(t["error"]) < 0.03 and t["traced_gib"] > 7  # full size: 7.2 GiB of bf16 weights alone
    assert set(r["trace"]) >= {
        "text_encoder_activations",
        "vae_encode_activations",
        "sampling_forward_activations",
    }


def test_text_output_and_auto_fit(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "--preset", "dev", "--gpu", "48", "--auto-fit"]) == 0
    out = capsys.readouterr().out
    assert (
        "peak while training" in out
        and "does not fit" in out
        and "auto-fit" in out
        # One 48 GB GPU and 64 GiB of host RAM: block swap and an int8 text encoder (issue 21).
        and "blocks_to_swap: 31" in out
        and "text_encoder_quantization: int8" in out
        and "host RAM" in out
    )
