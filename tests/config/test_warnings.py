"""Common-mistake warnings: one table of (config, context) → the warned field and its fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from flux2_lora.config import TrainConfig
from flux2_lora.config.io import load_config
from flux2_lora.config.warnings import common_mistakes, has_bf16
from tests.helpers import cli, sets

DEV = ["model.path=black-forest-labs/FLUX.2-dev", "model.variant=dev", "model.dtype=bfloat16"]
KLEIN = ["model.path=black-forest-labs/FLUX.2-klein-base-4B", "model.dtype=bfloat16"]


def cfg(*overrides: str) -> TrainConfig:
    return load_config(overrides=list(overrides))[0]


CASES = [
    # (overrides, context, field warned, its one-click fix)
    ((*KLEIN, "training.learning_rate=5e-4"), {}, "training.learning_rate", {"training.learning_rate": 1e-4}),
    ((*KLEIN,), {"num_images": 6}, "dataset.path", {}),
    ((*KLEIN,), {"upscaled": [("a.png", 800, 900)]}, "dataset.resolution", {"dataset.resolution": 768}),
    (
        (*KLEIN, "model.dtype=float16"),
        {"gpu_name": "80 GB (A100/H100 80GB)"},
        "model.dtype",
        {"model.dtype": "bfloat16"},
    ),
    (
        (*DEV, "training.batch_size=2", "training.gradient_accumulation_steps=3"),
        {},
        "training.batch_size",
        {"training.batch_size": 1, "training.gradient_accumulation_steps": 6},
    ),
    (
        (*DEV, "memory.gradient_checkpointing=false"),
        {"verdict": "does_not_fit"},
        "memory.gradient_checkpointing",
        {"memory.gradient_checkpointing": True},
    ),
]


@pytest.mark.parametrize(("overrides", "context", "field", "fix"), CASES)
def test_each_mistake_is_warned_with_its_fix(
    overrides: tuple[str, ...], context: dict[str, Any], field: str, fix: dict[str, Any]
) -> None:
    found = {w.field: w for w in common_mistakes(cfg(*overrides), **context)}
    assert field in found and found[field].fix and found[field].overrides == fix
    # and the fix, applied, silences it
    if fix:
        fixed = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in fix.items()]
        assert field not in {w.field for w in common_mistakes(cfg(*overrides, *fixed), **context)}


@pytest.mark.parametrize(
    ("overrides", "context"),
    [
        ((*KLEIN,), {"num_images": 12, "upscaled": [], "verdict": "fits", "gpu_name": "24 GB"}),
        (("training.learning_rate=5e-3",), {}),  # the demo's toy model trains at a large step on purpose
        ((*KLEIN, "model.dtype=float16"), {"gpu_name": "local: Tesla V100-SXM2-32GB"}),  # no bf16 there
        ((*KLEIN, "memory.gradient_checkpointing=false"), {"verdict": "fits"}),
        ((*KLEIN, "training.batch_size=4"), {}),  # batch > 1 is only a mistake on [dev]
    ],
)
def test_good_configs_are_quiet(overrides: tuple[str, ...], context: dict[str, Any]) -> None:
    assert common_mistakes(cfg(*overrides), **context) == []


def test_bf16_by_gpu_name() -> None:
    assert has_bf16("local: NVIDIA H200") and has_bf16("24 GB (RTX 3090/4090, A10)")
    assert has_bf16("local: Tesla T4") is False and has_bf16("NVIDIA GeForce RTX 2080 Ti") is False
    assert has_bf16("some card") is None and has_bf16(None) is None


def test_validate_prints_the_warnings(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.new("RGB", (300, 200)).save(photos / f"{i}.png")
    proc = cli(
        "validate",
        *sets(
            *DEV,
            f"dataset.path={photos}",
            "training.learning_rate=3e-4",
            "memory.gradient_checkpointing=false",
        ),
        "--gpu",
        "24",
    )
    assert proc.returncode == 0 and "config is valid" in proc.stdout, proc.stderr
    for field in (
        "training.learning_rate",
        "dataset.path",
        "dataset.resolution",
        "memory.gradient_checkpointing",
    ):
        assert f"warning: {field}:" in proc.stderr, proc.stderr
    assert "fix: lower the resolution to 192" in proc.stderr or "fix: use larger images" in proc.stderr
    assert cli("validate", "--gpu", "nope").returncode == 2
