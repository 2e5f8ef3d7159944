"""The sweep spec: closed, checked against the training schema, every problem at once by its place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flux2_lora.experiments.spec import SpecError, build_plan, parse_spec, sweepable_fields

GRID = {"lora.rank": {"values": [4, 8]}, "training.learning_rate": {"values": [1e-3, 5e-3]}}


def errors(data: dict[str, Any], tmp: Path | None = None) -> list[str]:
    try:
        build_plan(parse_spec(data), tmp)
    except SpecError as e:
        return [str(i) for i in e.issues]
    return []


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"parameters": GRID, "method": "grid", "bogus": 1}, ["bogus: unknown key"]),
        (
            {"parameters": {"lora.rank": {"values": [4], "lo": 1}}},
            ["parameters.lora.rank.lo: unknown key (did you mean 'low'?)"],
        ),
        (
            {"parameters": {"lora.rnak": {"values": [4]}}, "method": "grid"},
            ["parameters.lora.rnak: unknown config field (did you mean 'lora.rank'?)"],
        ),
        (
            {
                "parameters": {"lora.rank": {"values": [4]}},
                "base": {"set": {"trainig.max_steps": 4}},
                "trials": 1,
            },
            ["base.set.trainig.max_steps: unknown config field (did you mean 'training.max_steps'?)"],
        ),
        (
            {"parameters": {"dataset.resolution": {"values": [64, 100]}}, "method": "grid"},
            ["parameters.dataset.resolution.values[1]: 100: dataset.resolution: must be a multiple of 16"],
        ),
        (
            {"parameters": {"training.learning_rate": {"low": 0, "high": 1e-3, "log": True}}, "trials": 2},
            ["parameters.training.learning_rate.low: must be > 0 for a log-scale range"],
        ),
        (
            {"parameters": {"lora.rank": {"low": 2.5, "high": 8}}, "trials": 2},
            ["parameters.lora.rank.low: must be a whole number for an integer field (got 2.5)"],
        ),
        (
            {"parameters": {"lora.rank": {"low": 4, "high": 8}}, "method": "grid"},
            ["parameters.lora.rank: grid search walks values: give values: [...] instead of a range"],
        ),
        (
            {"parameters": {"training.optimizer": {"low": 1, "high": 2}}, "trials": 2},
            ["parameters.training.optimizer: is a choice field: give values: [...], a range needs a number"],
        ),
        (
            {"parameters": {"lora.rank": {"values": [4], "low": 1, "high": 2}}, "trials": 1},
            ["parameters.lora.rank: give either values or a low/high range, not both"],
        ),
        ({"parameters": GRID, "method": "random"}, ["trials: is required for method random"]),
        ({"parameters": GRID, "method": "grid", "trials": 5}, ["trials: 5 is more than the grid's 4 points"]),
        (
            {"parameters": {"output.dir": {"values": ["a", "b"]}}, "trials": 2},
            ["parameters.output.dir: is chosen by the sweep"],
        ),
        (
            {"parameters": {"lora.rank": {"values": [0]}}, "method": "grid"},
            ["parameters.lora.rank.values[0]: 0: lora.rank: must be ≥ 1 (got 0)"],
        ),
        ({"parameters": {}}, ["parameters: needs at least 1 item(s)"]),
        (
            {"parameters": GRID, "method": "grid", "base": {"presets": ["nope"]}},
            ["base: unknown preset 'nope'"],
        ),
    ],
)
def test_spec_errors_name_their_place(spec: dict[str, Any], expected: list[str]) -> None:
    got = errors(spec)
    assert len(got) == len(expected), got
    for g, e in zip(got, expected):
        assert g.startswith(e), (g, e)


def test_every_problem_is_reported_at_once() -> None:
    got = errors(
        {
            "parameters": {"lora.rnak": {"values": [4]}, "dataset.resolution": {"values": [100]}},
            "method": "random",
            "extra": True,
        }
    )
    assert [g.split(":")[0] for g in got] == ["extra", "parameters.lora.rnak"]  # the model check first
    got = errors({"parameters": {"lora.rnak": {"values": [4]}, "dataset.resolution": {"values": [100]}}})
    assert {g.split(":")[0] for g in got} == {
        "parameters.lora.rnak",
        "parameters.dataset.resolution.values[0]",
        "trials",
    }


def test_a_plan_composes_presets_file_and_set_and_builds_each_trial(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("training:\n  max_steps: 17\nlora:\n  dropout: 0.1\n")
    (tmp_path / "photos").mkdir()
    spec = parse_spec(
        {
            "base": {
                "presets": ["quickstart"],
                "config": "base.yaml",  # relative to the spec's folder
                "set": {"lora.dropout": 0.2, "dataset": {"path": str(tmp_path / "photos")}},
            },
            "parameters": {**GRID, "lora.target_modules": {"values": ["default", "all-linear"]}},
            "method": "grid",
        }
    )
    plan = build_plan(spec, tmp_path)
    assert plan.grid_size == 8 and plan.trial_budget() == 8 and plan.trial_budget(3) == 3
    config, issues = plan.trial_config(
        {"lora.rank": 8, "training.learning_rate": 5e-3, "lora.target_modules": "all-linear"},
        tmp_path / "trial-0001",
    )
    assert config is not None, issues
    assert config.training.max_steps == 17 and config.lora.dropout == 0.2 and config.lora.rank == 8
    assert config.lora.target_modules == ["all-linear"]  # a list field takes one item per value
    assert config.output.dir == str(tmp_path / "trial-0001")
    assert config.dataset.path == str((tmp_path / "photos").resolve())


def test_corners_bound_memory() -> None:
    plan = build_plan(
        parse_spec(
            {
                "parameters": {
                    "lora.rank": {"low": 4, "high": 64, "log": True},
                    "dataset.resolution": {"values": [256, 512, 768]},
                },
                "trials": 5,
            }
        )
    )
    corners = plan.corners()
    assert {c["lora.rank"] for c in corners} == {4, 64} and len(corners) == 6


def test_sweepable_fields_come_from_the_schema() -> None:
    fields = {f["path"]: f for f in sweepable_fields()}
    assert fields["lora.rank"]["kind"] == "int" and fields["training.learning_rate"]["kind"] == "float"
    assert (
        fields["training.optimizer"]["kind"] == "choice"
        and "adamw" in fields["training.optimizer"]["choices"]
    )
    assert (
        "output.dir" not in fields and "memory.attention_slicing" not in fields
    )  # set by the sweep; disabled


def test_spec_file_yaml_errors_are_clean(tmp_path: Path) -> None:
    from flux2_lora.experiments.spec import load_spec

    bad = tmp_path / "spec.yaml"
    bad.write_text("parameters: [unclosed\n")
    with pytest.raises(SpecError) as e:
        load_spec(bad)
    assert str(bad) in str(e.value)
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "missing.yaml")


def test_yaml_exponents_without_a_dot_are_numbers(tmp_path: Path) -> None:
    from flux2_lora.experiments.spec import load_spec

    f = tmp_path / "spec.yaml"
    f.write_text(
        "parameters:\n  training.learning_rate: {values: [2e-5, 1e-4]}\n  lora.rank: {values: ['8']}\nmethod: grid\n"
    )
    plan = build_plan(load_spec(f))
    assert plan.grid == {"training.learning_rate": [2e-5, 1e-4], "lora.rank": [8]}
