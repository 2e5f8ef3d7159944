"""What the console says: one line per failure, no library noise, the demo by default, generate drawing
a LoRA the way its run sampled."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import pytest

from flux2_lora import runs
from flux2_lora.config.io import save_config

from .conftest import tiny_config
from .helpers import cli, sets

NOISE = ("torchao", "kernels-community", "kept in float32", "register_constant", "Failed to load")


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_an_offline_hub_id_fails_in_one_line_without_traceback_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = "black-forest-labs/FLUX.2-klein-base-4B"
    proc = cli("train", "--preset", "quickstart", *sets(f"output.dir={tmp_path}/r", f"model.path={model}"))
    assert proc.returncode == 1
    errors = _errors(proc.stderr)
    assert len(errors) == 1, proc.stderr
    assert "not in the local Hugging Face cache" in errors[0] and f"hf download {model}" in errors[0]
    assert "stacktrace" not in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("not in the local Hugging Face cache") == 1, "said once, not by the log too"
    status = runs.read_status(tmp_path / "r")
    assert status is not None and status.state == "failed" and "model.path" in status.message
    assert "[failed]" in (tmp_path / "r" / runs.LOG_FILE).read_text(), "the log keeps the record"


def test_estimate_trace_prints_no_library_noise() -> None:
    proc = cli("estimate", "--preset", "quickstart", "--trace", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "traced training peak" in proc.stdout
    for word in NOISE:
        assert word not in proc.stderr, proc.stderr


def test_library_records_go_to_the_run_log_not_the_console(tmp_path: Path) -> None:
    from flux2_lora.training import quiet
    from flux2_lora.training.tracking import setup_logging

    logging.getLogger("flux2_lora").handlers.clear()  # no run log of an earlier test in this process
    quiet.quiet_libraries(debug=False)
    logging.getLogger("torchao").warning("Failed to load _C_mxfp8.so")  # before the log exists
    setup_logging(tmp_path, is_main=True)
    try:
        logging.getLogger("diffusers.models").warning("kept in float32: []")
        for h in logging.getLogger("flux2_lora").handlers:
            h.flush()
        log = (tmp_path / runs.LOG_FILE).read_text()
        assert "[torchao] Failed to load _C_mxfp8.so" in log and "[diffusers.models] kept in float32" in log
        assert not logging.getLogger("torchao").propagate
    finally:
        logging.getLogger("flux2_lora").handlers.clear()


def _plain(*overrides: str) -> argparse.Namespace:
    return argparse.Namespace(config=None, config_opt=None, preset=[], overrides=list(overrides))


def test_plain_train_means_the_quickstart_demo(capsys: pytest.CaptureFixture[str]) -> None:
    from flux2_lora.cli.train import _default_to_quickstart

    args = _plain("training.max_steps=5")
    _default_to_quickstart(args)
    assert args.preset == ["quickstart"] and "quickstart" in capsys.readouterr().err
    real = _plain("model.path=black-forest-labs/FLUX.2-klein-base-4B")
    _default_to_quickstart(real)
    assert real.preset == [], "a real model keeps the schema's defaults"
    given = argparse.Namespace(config=None, config_opt=None, preset=["fast"], overrides=[])
    _default_to_quickstart(given)
    assert given.preset == ["fast"]


@pytest.mark.slow
def test_plain_train_runs_the_demo_with_one_eta(tmp_path: Path) -> None:
    out = tmp_path / "r"
    proc = cli(
        "train",
        *sets(
            f"output.dir={out}",
            "training.max_steps=4",
            "training.warmup_steps=0",  # the quickstart's 10 would exceed the 4 steps (refused)
            "validation.enabled=false",
            "logging.log_every=2",
        ),
    )
    assert proc.returncode == 0, proc.stderr
    assert "training the quickstart demo" in proc.stderr
    saved = (out / runs.CONFIG_FILE).read_text()
    assert "resolution: 64" in saved
    bars = [line for line in re.split(r"[\r\n]", proc.stderr) if "step" in line and "|" in line]
    assert bars and all(not re.search(r"\d\d:\d\d<", b) for b in bars), bars  # tqdm's own ETA is gone
    assert any("eta=" in b for b in bars)
    for word in NOISE:
        assert word not in proc.stderr


def test_generate_takes_steps_and_guidance_from_the_loras_run(tmp_path: Path) -> None:
    from flux2_lora.cli.generate import run_sampling

    config = tiny_config(tmp_path / "run")
    (tmp_path / "run").mkdir()
    save_config(config, tmp_path / "run" / runs.CONFIG_FILE)
    lora = tmp_path / "run" / runs.LORA_FILE
    model, settings, source = run_sampling(str(lora))
    val = config.validation
    assert settings == {"steps": val.num_inference_steps, "guidance": val.guidance_scale, "resolution": 64}
    assert (settings["steps"], settings["guidance"]) == (8, 1.0)  # the quickstart's, not the schema's 28 / 4
    assert model["path"] == "demo" and source == tmp_path / "run" / runs.CONFIG_FILE
    assert run_sampling(str(tmp_path / "elsewhere.safetensors")) == ({}, {}, None)
    assert run_sampling(None) == ({}, {}, None)


def test_estimate_of_an_unknown_model_says_it_once(tmp_path: Path) -> None:
    proc = cli("estimate", *sets(f"model.path={tmp_path}/nowhere"))
    assert proc.returncode == 2
    assert len(_errors(proc.stderr)) == 1 and "model.path" in proc.stderr, proc.stderr
