"""Model-variant facts live in variants.py; every other place that names variants is tied to it here."""

from __future__ import annotations

from typing import get_args

from flux2_lora.config.io import load_config
from flux2_lora.config.presets import list_presets
from flux2_lora.config.schema import ModelSection
from flux2_lora.experiments.autotune import VARIANT_PRESETS
from flux2_lora.variants import (
    _HUB_PATTERNS,
    LIGHTEST_REAL_VARIANT,
    REAL_VARIANTS,
    VARIANT_NAMES,
    VARIANTS,
    resolve_model,
    variant_from_name,
)


def test_every_name_of_a_variant_is_one_of_the_table() -> None:
    assert set(VARIANTS) == set(VARIANT_NAMES) and all(VARIANTS[n].name == n for n in VARIANT_NAMES)
    assert set(get_args(ModelSection.model_fields["variant"].annotation)) == {"auto", *VARIANT_NAMES}
    assert set(REAL_VARIANTS) == set(VARIANT_NAMES) - {"demo"} and LIGHTEST_REAL_VARIANT in REAL_VARIANTS
    assert {target for _, target in _HUB_PATTERNS} == set(REAL_VARIANTS)
    assert set(VARIANT_PRESETS) == set(REAL_VARIANTS)


def test_each_real_variant_has_its_preset_and_hub_ids_that_resolve_to_it() -> None:
    for name in REAL_VARIANTS:
        assert name in {p.name for p in list_presets()}
        config, _ = load_config(presets=[name])
        assert config.model.variant == name and resolve_model(config.model.path, "auto").variant == name
        for hub_id in VARIANTS[name].hub_ids:
            assert variant_from_name(hub_id) == name
    # The lightest variant really is the lightest.
    params = {
        n: VARIANTS[n].transformer.num_layers * 2 + VARIANTS[n].transformer.num_single_layers
        for n in REAL_VARIANTS
    }
    heads = {n: VARIANTS[n].transformer.num_attention_heads for n in REAL_VARIANTS}
    assert heads[LIGHTEST_REAL_VARIANT] == min(heads.values()) and params[LIGHTEST_REAL_VARIANT] == min(
        params.values()
    )
