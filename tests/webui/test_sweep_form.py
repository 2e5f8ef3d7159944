"""The Sweep tab's form → spec (pure): values typed as text, ranges, the base's set lines."""

from __future__ import annotations

from flux2_lora.webui.tabs.sweep import parse_set, parse_values, spec_from_form


def test_values_are_read_as_yaml_scalars() -> None:
    assert parse_values("16, 32") == [16, 32]
    assert parse_values("2e-5, 1e-4") == [2e-5, 1e-4]
    assert parse_values("adamw, prodigy ,") == ["adamw", "prodigy"]
    assert parse_values("true, false") == [True, False]
    assert parse_values("[oops") == ["[oops"]  # kept as text; the plan names the field if it is wrong


def test_set_lines() -> None:
    values, bad = parse_set(
        "dataset.path=./photos\ntraining.max_steps=400\n\nnonsense\nvalidation.prompts=a, b"
    )
    assert values == {"dataset.path": "./photos", "training.max_steps": 400, "validation.prompts": "a, b"}
    assert bad == ["line 4: write section.key=value"]


def test_form_to_spec() -> None:
    rows = [
        ("lora.rank", "16, 32", "", "", False),
        ("training.learning_rate", "", "2e-5", "2e-4", True),
        (None, "ignored", "", "", False),
        ("lora.dropout", "", "x", "0.1", False),
        ("lora.alpha", "", "", "", False),
    ]
    spec, errors = spec_from_form(
        ["quickstart"], "mine", "training.max_steps=5", rows, "tpe", 6, "eval_loss", True
    )
    assert spec["base"] == {"presets": ["quickstart"], "set": {"training.max_steps": 5}, "template": "mine"}
    assert spec["parameters"] == {
        "lora.rank": {"values": [16, 32]},
        "training.learning_rate": {"low": 2e-5, "high": 2e-4, "log": True},
    }
    assert spec["method"] == "tpe" and spec["trials"] == 6 and spec["pruning"] == {"enabled": True}
    assert [e["field"] for e in errors] == ["parameter 4", "parameter 5"]
    assert "must both be numbers" in errors[0]["message"]
