"""CLI options derived from the config schema: `dataset check` takes DatasetSection's fields."""

from __future__ import annotations

import json

import pytest

from flux2_lora.cli import build_parser, main
from flux2_lora.cli.dataset import CHECK_FIELDS
from flux2_lora.config import DatasetSection


def _options(*path: str) -> dict[str, str]:
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if a.choices and name in a.choices)
        parser = sub.choices[name]
    return {o: a.help or "" for a in parser._actions for o in a.option_strings}


def test_dataset_check_options_are_the_schemas_fields() -> None:
    options = _options("dataset", "check")
    for name in CHECK_FIELDS:
        flag = f"--{name.replace('_', '-')}"
        assert flag in options, flag
        assert (DatasetSection.model_fields[name].description or "") in options[flag]  # the schema's help
    assert "--buckets" in options  # the older name stays


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bucket-step", "20"], "--bucket-step: must be a multiple of 16"),
        (["--resolution", "8"], "--resolution: must be ≥ 16 (got 8)"),
        (["--caption-extension", "txt"], "--caption-extension: must look like .txt or .caption"),
    ],
)
def test_dataset_check_refuses_what_the_schema_refuses(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dataset", "check", "demo", *args]) == 2
    assert message in capsys.readouterr().err


def test_dataset_check_reports_small_images_only_against_a_given_resolution(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["dataset", "check", "demo", "--json"]) == 0
    assert "upscaled" not in capsys.readouterr().out
    assert main(["dataset", "check", "demo", "--json", "--resolution", "256", "--bucketing"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "upscaled" in json.dumps(report["problems"]) and report["buckets"]
