"""GenerationSettings: one model for `flux2-lora generate`, the Test LoRA tab and the /generate API."""

from __future__ import annotations

from pathlib import Path

import pytest

from flux2_lora.cli import build_parser, main
from flux2_lora.config import GenerationSettings, TrainConfig, ValidationSection
from flux2_lora.config.io import load_config, save_config, validate_section


def test_steps_and_guidance_are_the_validation_samples_fields() -> None:
    own = GenerationSettings.model_fields
    val = ValidationSection.model_fields
    for name, like in (("steps", "num_inference_steps"), ("guidance", "guidance_scale")):
        assert own[name].default == val[like].default
        assert own[name].metadata == val[like].metadata  # the same bounds


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"steps": 0}, "steps: must be ≥ 1 (got 0)"),
        ({"steps": 201}, "steps: must be ≤ 200 (got 201)"),
        ({"guidance": -1}, "guidance: must be ≥ 0.0 (got -1)"),
        ({"resolution": 1000}, "resolution: must be a multiple of 16"),
        ({"seed": -1}, "seed: must be ≥ 0 (got -1)"),
        ({"scale": 11}, "scale: must be ≤ 10.0 (got 11)"),
        ({"sampler": "euler"}, "sampler: unknown key"),
    ],
)
def test_bad_settings_are_named_by_field(data: dict[str, object], message: str) -> None:
    settings, issues = validate_section(GenerationSettings, data)
    assert settings is None and str(issues[0]).startswith(message)


def test_a_runs_own_settings() -> None:
    config, _ = load_config(
        presets=["quickstart"],
        overrides=[
            "validation.num_inference_steps=8",
            "validation.guidance_scale=1.5",
            "dataset.resolution=64",
        ],
    )
    own = GenerationSettings.for_run(config)
    assert (own.steps, own.guidance, own.resolution) == (8, 1.5, 64)
    assert own.prompt == (config.validation.prompts or [config.dataset.default_caption])[0]


def test_generate_options_are_the_settings_fields() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    generate = sub.choices["generate"]
    options = {o for a in generate._actions for o in a.option_strings}
    assert {f"--{name}" for name in GenerationSettings.model_fields} <= options
    assert {"--model", "--variant", "--device", "--lora", "--out"} <= options


def test_generate_refuses_bad_options_by_name_before_loading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.png"
    code = main(["generate", "--prompt", "x", "--steps", "500", "--device", "gpu", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "--steps: must be ≤ 200 (got 500)" in err and "--device: must be auto, cpu, cuda or cuda:N" in err


def test_the_ui_takes_a_runs_settings_and_checks_the_rest(tmp_path: Path) -> None:
    from flux2_lora.webui import jobs
    from flux2_lora.webui.paths import AppPaths

    paths = AppPaths.create(tmp_path / "runs", [tmp_path])
    run = paths.runs / "r1"
    run.mkdir()
    config, _ = load_config(presets=["quickstart"], overrides=["validation.num_inference_steps=8"])
    save_config(config, run / "config.yaml")
    lora = run / "pytorch_lora_weights.safetensors"
    lora.write_bytes(b"")
    d = jobs.run_defaults(paths, str(lora))
    assert d["ok"] and d["steps"] == 8 and d["resolution"] == config.dataset.resolution
    r = jobs.generate(paths, str(lora), "a red circle", steps=500, resolution=0)
    assert not r["ok"] and r["message"] == "steps: must be ≤ 200 (got 500)"
    r = jobs.generate(paths, str(lora), "a red circle", resolution=1000)
    assert not r["ok"] and r["message"].startswith("resolution: must be a multiple of 16")
    assert list(paths.generated.iterdir()) == []  # nothing was started
    assert TrainConfig().validation.num_inference_steps == GenerationSettings().steps


def test_a_prompt_with_control_characters_is_refused() -> None:
    import pytest
    from pydantic import ValidationError

    from flux2_lora.config import GenerationSettings

    for bad in ("a\x00b", "a\x01red square", "two\nlines"):
        with pytest.raises(ValidationError, match="control characters|NUL"):
            GenerationSettings(prompt=bad)
    assert GenerationSettings(prompt="a red square, sks style").prompt
