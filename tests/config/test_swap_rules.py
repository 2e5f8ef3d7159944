"""memory.blocks_to_swap's rules: a table of (overrides, exact field and message fragment)."""

from __future__ import annotations

import pytest

from flux2_lora.config.io import ConfigError, load_config
from flux2_lora.variants import VARIANTS, blocks_to_swap_error


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ("memory.blocks_to_swap=3",),
            "memory.blocks_to_swap: 3 is more than Embedded demo allows: it has 4 blocks (2 double-stream + 2 "
            "single-stream) and two of them are on the GPU at any time, so at most 2",
        ),
        (
            ("model.path=org/x", "model.variant=dev", "memory.blocks_to_swap=55"),
            "memory.blocks_to_swap: 55 is more than FLUX.2 [dev] allows: it has 56 blocks",
        ),
        (
            ("memory.blocks_to_swap=2", "memory.gradient_checkpointing=false"),
            "memory.blocks_to_swap: needs memory.gradient_checkpointing",
        ),
        (
            ("memory.blocks_to_swap=2", "memory.quantization=int8"),
            "memory.blocks_to_swap: cannot stream torchao's int8 weights",
        ),
        (
            ("memory.blocks_to_swap=2", "performance.compile=true"),
            "memory.blocks_to_swap: cannot run with performance.compile",
        ),
        (
            ("memory.blocks_to_swap=2", "distributed.num_processes=2"),
            "memory.blocks_to_swap: streams blocks for one process",
        ),
        (
            ("performance.float8=true", "memory.quantization=fp8"),
            "performance.float8: cannot run FP8 matrix products on fp8 weights (memory.quantization fp8 stores",
        ),
    ],
)
def test_swap_rules_refuse_with_the_field(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(presets=["quickstart"], overrides=list(overrides))
    assert message in str(e.value)


@pytest.mark.parametrize("extra", [(), ("memory.quantization=fp8",), ("memory.quantization=nf4",)])
def test_swap_within_the_maximum_is_accepted(extra: tuple[str, ...]) -> None:
    config, _ = load_config(presets=["quickstart"], overrides=["memory.blocks_to_swap=2", *extra])
    assert config.memory.blocks_to_swap == 2


def test_per_variant_maxima_are_blocks_minus_two() -> None:
    maxima = {name: v.transformer.max_blocks_to_swap for name, v in VARIANTS.items()}
    assert maxima == {"dev": 54, "klein-9b": 30, "klein-4b": 23, "demo": 2}
    assert blocks_to_swap_error(54, VARIANTS["dev"].transformer, "FLUX.2 [dev]") is None
