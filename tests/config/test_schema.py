"""The one typed config: bounds, help, all errors at once by dotted path, overrides, presets."""

from __future__ import annotations

from pathlib import Path

import pytest

from flux2_lora.config import SECTIONS, TrainConfig, TrainingSection, mixed_precision
from flux2_lora.config.io import ConfigError, load_config, to_yaml, validate_dict
from flux2_lora.config.presets import list_presets, load_preset


def test_every_field_has_help_text() -> None:
    for section, model in SECTIONS.items():
        for name, field in model.model_fields.items():
            assert field.description and len(field.description) > 15, f"{section}.{name} lacks help"


def test_all_errors_reported_at_once_by_dotted_path() -> None:
    data = {
        "training": {"learning_rate": -1, "max_steps": 0, "bogus": 1},
        "lora": {"rank": 0},
        "dataset": {"resolution": 1000},
    }
    config, issues = validate_dict(data)
    assert config is None
    paths = {i.path for i in issues if i.level == "error"}
    assert {
        "training.learning_rate",
        "training.max_steps",
        "training.bogus",
        "lora.rank",
        "dataset.resolution",
    } <= paths
    res = next(i for i in issues if i.path == "dataset.resolution")
    assert "multiple of 16" in res.message and "992" in res.message


def test_unknown_section_and_key_suggestions() -> None:
    _, issues = validate_dict({"trainin": {}, "training": {"learning_rat": 1e-4}})
    text = " ".join(i.message for i in issues)
    assert "training" in text and "learning_rate" in text


def test_mixed_precision_follows_dtype_and_is_no_field() -> None:
    assert "mixed_precision" not in TrainingSection.model_fields
    assert [mixed_precision(d) for d in ("bfloat16", "float16", "float32")] == ["bf16", "fp16", "no"]
    assert mixed_precision("auto").startswith("auto")


@pytest.mark.parametrize(
    ("dtype", "mixed", "says"),
    [
        ("bfloat16", "bf16", "follows model.dtype; remove this line"),
        ("float32", "auto", "follows model.dtype; remove this line"),
        ("auto", "fp16", "set model.dtype: float16 for 'fp16'"),
    ],
)
def test_an_older_config_with_a_consistent_mixed_precision_loads_with_a_warning(
    tmp_path: Path, dtype: str, mixed: str, says: str
) -> None:
    old = tmp_path / "old.yaml"
    old.write_text(f"model:\n  dtype: {dtype}\ntraining:\n  mixed_precision: {mixed}\n  max_steps: 7\n")
    config, warnings = load_config(old)
    assert config.model.dtype == dtype and config.training.max_steps == 7
    assert [w.path for w in warnings] == ["training.mixed_precision"] and says in warnings[0].message
    assert "mixed_precision" not in to_yaml(config)  # saved again without it
    via_set, warnings = load_config(overrides=[f"model.dtype={dtype}", f"training.mixed_precision={mixed}"])
    assert via_set == config.model_copy(update={"training": TrainingSection()}) and warnings


@pytest.mark.parametrize(
    ("dtype", "mixed", "message"),
    [
        ("bfloat16", "fp16", "'fp16' contradicts model.dtype 'bfloat16', which implies 'bf16'"),
        ("float32", "bf16", "'bf16' contradicts model.dtype 'float32', which implies 'no'"),
        ("auto", "fp8", "'fp8' is not one of auto, bf16, fp16, no"),
    ],
)
def test_a_contradicting_mixed_precision_is_refused(dtype: str, mixed: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[f"model.dtype={dtype}", f"training.mixed_precision={mixed}"])
    assert f"training.mixed_precision: {message}; " in str(e.value)


def test_overrides_are_typed_and_checked() -> None:
    config, _ = load_config(
        overrides=[
            "training.learning_rate=2e-4",
            "lora.target_modules=[single, attn.to_q]",
            "validation.prompts=[a cat, a dog]",
        ]
    )
    assert config.training.learning_rate == 2e-4
    assert config.lora.target_modules == ["single", "attn.to_q"]
    with pytest.raises(ConfigError, match="lora.target_modules"):
        load_config(overrides=["lora.target_modules=[attn.to_nothing]"])
    with pytest.raises(ConfigError):
        load_config(overrides=["training.nonsense=1"])


def test_attention_slicing_is_disabled_with_a_reason() -> None:
    with pytest.raises(ConfigError, match="memory.attention_slicing: .*not available for FLUX.2"):
        load_config(overrides=["memory.attention_slicing=true"])
    assert TrainConfig.model_fields  # the field stays visible (the UI shows it disabled)
    extra = SECTIONS["memory"].model_fields["attention_slicing"].json_schema_extra
    assert extra["ui"]["disabled"] is True


@pytest.mark.parametrize("name", [p.name for p in list_presets()])
def test_every_preset_validates(name: str) -> None:
    data, problems = load_preset(name)
    assert not problems and data
    config, issues = validate_dict(data)
    assert config is not None, issues
    assert not [i for i in issues if i.level == "error"]


def test_expected_presets_ship() -> None:
    names = {p.name for p in list_presets()}
    assert {
        "quickstart",
        "fast",
        "high-quality",
        "low-vram",
        "character",
        "style",
        "concept",
        "dev",
        "klein-4b",
        "klein-9b",
    } <= names


def test_yaml_round_trip(tmp_path: Path) -> None:
    config, _ = load_config(presets=["style"], overrides=["training.seed=7"])
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(config))
    again, _ = load_config(file=path)
    assert again == config
