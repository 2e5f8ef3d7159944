"""The EMA and adapter-type fields: bounds, the rules that refuse meaningless combinations, warnings."""

from __future__ import annotations

import pytest

from flux2_lora.config.io import ConfigError, load_config
from flux2_lora.config.warnings import common_mistakes


def _errors(*overrides: str) -> dict[str, str]:
    try:
        load_config(overrides=list(overrides))
    except ConfigError as e:
        return {i.path: i.message for i in e.issues}
    return {}


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        (["training.ema_decay=1"], "training.ema_decay", "< 1"),
        (["training.ema_decay=-0.1"], "training.ema_decay", "≥ 0"),
        (["training.ema_update_every=0"], "training.ema_update_every", "≥ 1"),
        (["training.ema_device=tpu"], "training.ema_device", "gpu"),
        (["validation.sample_ema=true"], "validation.sample_ema", "training.ema_decay"),
        (
            ["training.ema_decay=0.99", "distributed.strategy=fsdp", "distributed.num_processes=2"],
            "training.ema_decay",
            "fsdp",
        ),
    ],
)
def test_bad_ema_settings_are_field_errors(overrides: list[str], field: str, words: str) -> None:
    errors = _errors(*overrides)
    assert field in errors and words in errors[field], errors


def test_ema_with_ddp_and_sampling_from_it_are_accepted() -> None:
    ok = ["training.ema_decay=0.99", "validation.sample_ema=true", "distributed.num_processes=2"]
    assert _errors(*ok) == {}


def test_an_ema_too_slow_for_the_run_is_warned_with_a_decay_that_fits() -> None:
    config, _ = load_config(overrides=["training.max_steps=500", "training.ema_decay=0.999"])
    (w,) = [w for w in common_mistakes(config) if w.field == "training.ema_decay"]
    assert "61%" in w.message  # 0.999^500 of the untrained start left
    fixed, _ = load_config(
        overrides=["training.max_steps=500", f"training.ema_decay={w.overrides['training.ema_decay']}"]
    )
    d = fixed.training.ema_decay
    assert d**500 <= 0.01 < (d + 0.001) ** 500  # the slowest decay (in steps of 0.001) leaving ≤ 1%
    assert not [w for w in common_mistakes(fixed) if w.field.startswith("training.ema")]
    off, _ = load_config(overrides=["training.max_steps=500"])
    assert not [w for w in common_mistakes(off) if w.field.startswith("training.ema")]


def test_an_ema_never_updated_is_warned() -> None:
    config, _ = load_config(
        overrides=["training.max_steps=100", "training.ema_decay=0.9", "training.ema_update_every=200"]
    )
    (w,) = [w for w in common_mistakes(config) if w.field == "training.ema_update_every"]
    assert "never updated" in w.message and w.overrides == {"training.ema_update_every": 1}


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        (["lora.type=lokr", "lora.use_dora=true", "lora.dropout=0"], "lora.use_dora", "no DoRA form"),
        (["lora.type=loha", "lora.dropout=0.1"], "lora.dropout", "no input dropout"),
        (["lora.type=lokr", "lora.dropout=0", "memory.quantization=nf4"], "memory.quantization", "nf4"),
        (["lora.type=loha", "lora.dropout=0", "performance.float8=true"], "performance.float8", "loha"),
        (
            ["lora.type=lokr", "lora.dropout=0", "distributed.strategy=fsdp", "distributed.num_processes=2"],
            "lora.type",
            "FSDP",
        ),
        (["lora.lokr_factor=8"], "lora.lokr_factor", "only applies to lora.type lokr"),
        (["lora.type=loha", "lora.lokr_decompose_both=true"], "lora.lokr_decompose_both", "lokr"),
        (["lora.type=lycoris"], "lora.type", "lokr"),
    ],
)
def test_meaningless_adapter_type_combinations_are_field_errors(
    overrides: list[str], field: str, words: str
) -> None:
    errors = _errors(*overrides)
    assert field in errors and words in errors[field], errors


def test_lokr_with_its_settings_is_accepted() -> None:
    assert _errors("lora.type=lokr", "lora.lokr_factor=8", "lora.lokr_decompose_both=true") == {}
    for kind in ("lokr", "loha"):  # their ComfyUI export exists (tests/training/test_export_comfyui.py)
        assert _errors(f"lora.type={kind}", "lora.dropout=0", "output.export_comfyui=true") == {}
