"""One assessment for every caller: the same configs through assess(), `validate --json` and
`estimate --json` give the same errors, warnings, verdict and host RAM (the API and the Train tab are
checked against the same table in tests/webui)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flux2_lora.assess import WITHOUT_ENV, Assessment, Environment, assess, dataset_facts, environment
from flux2_lora.config.io import compose, load_config, validate_dict

# (name, presets, overrides, gpu, error fields the assessment must name, packages treated as missing)
CASES: list[tuple[str, list[str], list[str], str, set[str], str]] = [
    (
        "spec example 1: character on H100",
        ["dev", "character"],
        ["dataset.resolution=1024", "lora.rank=32", "model.dtype=float16"],
        "80",
        set(),
        "",
    ),
    (
        "spec example 2: style at 1536",
        ["dev", "style"],
        ["dataset.resolution=1536", "lora.rank=64"],
        "80",
        set(),
        "",
    ),
    (
        "spec example 3: A100 40GB",
        ["dev"],
        [
            "dataset.resolution=768",
            "lora.rank=16",
            "model.dtype=float16",
            "training.gradient_accumulation_steps=8",
        ],
        "40",
        set(),
        "",
    ),
    ("dev on 24 GB", ["dev"], [], "24", set(), ""),
    ("missing dataset", ["quickstart"], ["dataset.path={missing}"], "24", {"dataset.path"}, ""),
    ("0 usable images", ["quickstart"], ["dataset.path={empty}"], "24", {"dataset.path"}, ""),
    (
        "adamw8bit without CUDA",
        ["quickstart"],
        ["training.optimizer=adamw8bit"],
        "24",
        {"training.optimizer"},
        "",
    ),
    (
        "nf4 without bitsandbytes",
        ["klein-4b"],
        ["memory.quantization=nf4", "dataset.path=demo"],
        "24",
        {"memory.quantization"},
        "bitsandbytes",
    ),
    ("unknown hub id", ["quickstart"], ["model.path=someorg/my-flux-finetune"], "24", {"model.variant"}, ""),
    (
        "warmup > steps",
        ["quickstart"],
        ["training.warmup_steps=50", "training.max_steps=10"],
        "24",
        {"training.warmup_steps"},
        "",
    ),
]


def _overrides(case: list[str], tmp: Path) -> list[str]:
    (tmp / "empty").mkdir(exist_ok=True)
    (tmp / "empty" / "notes.txt").write_text("no images here")
    return [o.format(missing=tmp / "nope", empty=tmp / "empty") for o in case]


def composed(presets: list[str], overrides: list[str], gpu: str) -> tuple[dict[str, Any], Assessment]:
    """The case as the UI sends it (a mapping, valid or not) and the assessment of it."""
    data, issues = compose(presets, overrides=overrides)
    assert not [i for i in issues if i.level == "error"], issues
    config, _ = validate_dict(data)
    facts = dataset_facts(config) if config is not None else None
    return data, assess(config if config is not None else data, gpu=gpu, dataset=facts)


def _argv(presets: list[str], overrides: list[str]) -> list[str]:
    out: list[str] = []
    for p in presets:
        out += ["--preset", p]
    for o in overrides:
        out += ["--set", o]
    return out


def _cli(cmd: str, argv: list[str], gpu: str, without: str) -> dict[str, Any]:
    env = {**os.environ, WITHOUT_ENV: without}
    proc = subprocess.run(
        [sys.executable, "-m", "flux2_lora.cli", cmd, *argv, "--gpu", gpu, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def _summary(d: dict[str, Any]) -> dict[str, Any]:
    """What every surface must agree on."""
    report = d.get("report", d) if "report" in d else d
    report = report or {}
    return {
        "errors": sorted((e["field"], e["message"]) for e in d["errors"]),
        "warnings": sorted((w["field"], w["message"]) for w in d["warnings"]),
        "verdict": (report.get("gpu") or {}).get("verdict"),
        "host": round((report.get("host") or {}).get("peak_gib") or 0, 3),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "presets", "overrides", "gpu", "fields", "without"), CASES, ids=[c[0] for c in CASES]
)
def test_validate_and_estimate_agree_with_the_assessment(
    tmp_path: Path,
    name: str,
    presets: list[str],
    overrides: list[str],
    gpu: str,
    fields: set[str],
    without: str,
) -> None:
    overrides = _overrides(overrides, tmp_path)
    os.environ[WITHOUT_ENV] = without
    environment.cache_clear()
    try:
        _, a = composed(presets, overrides, gpu)
    finally:
        os.environ.pop(WITHOUT_ENV)
        environment.cache_clear()
    assert {e.field for e in a.errors} >= fields and (fields or a.ok), a.errors
    reference = _summary(a.to_dict())
    argv = _argv(presets, overrides)
    assert _summary(_cli("validate", argv, gpu, without)) == reference
    est = _cli("estimate", argv, gpu, without)
    assert _summary(est) == reference
    if a.report is None:
        assert "unknown model" in a.message or fields


def test_rules_are_the_configs_own() -> None:
    from pydantic import ValidationError

    from flux2_lora.config import TrainConfig
    from flux2_lora.config.io import with_updates

    with pytest.raises(ValidationError, match="training.warmup_steps"):
        TrainConfig.model_validate({"training": {"warmup_steps": 5000, "max_steps": 10}})
    with pytest.raises(ValidationError, match="performance.float8"):
        TrainConfig.model_validate({"performance": {"float8": True}, "memory": {"quantization": "nf4"}})
    with pytest.raises(ValidationError, match="training.warmup_steps"):
        with_updates(TrainConfig(), {"training.max_steps": 1, "training.warmup_steps": 5})
    assert with_updates(TrainConfig(), {"lora.rank": 4}).lora.rank == 4


def test_one_warning_per_fact() -> None:
    config, _ = load_config(presets=["klein-4b"], overrides=["training.learning_rate=5", "dataset.path=demo"])
    a = assess(config, gpu="80", env=Environment(cuda=True, packages=frozenset()))
    assert [w.field for w in a.warnings].count("training.learning_rate") == 1


def test_start_is_blocked_by_a_red_verdict_with_the_reason() -> None:
    config, _ = load_config(presets=["dev"])
    a = assess(config, gpu="24", env=Environment(cuda=True, packages=frozenset()), recommendations=False)
    d = a.to_dict()
    assert a.ok and not d["can_start"] and "does not fit" in d["start_reason"]
    fits = assess(config, gpu="141", env=Environment(cuda=True, packages=frozenset()), recommendations=False)
    assert fits.verdict == "fits" and not any("does not fit" in b for b in fits.blockers)
