"""The memory model sums block Linears once per block kind (every double block is alike, every single block
too): the figures must equal those summed Linear by Linear from the enumerated module names."""

from __future__ import annotations

import pytest

from flux2_lora.memory import static, timing
from flux2_lora.memory.activations import targets_by_block
from flux2_lora.targets import TARGET_SETS, enumerate_linears, resolve_targets
from flux2_lora.variants import VARIANTS


def _block_of(name: str) -> str:
    return name[
        : name.index(".", name.index(".") + 1)
    ]  # "transformer_blocks.3.attn.to_q" -> "transformer_blocks.3"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_per_kind_sums_equal_the_per_linear_sums(variant: str) -> None:
    arch = VARIANTS[variant].transformer
    blocks: dict[str, dict[str, int]] = {}
    for s in enumerate_linears(arch):
        if s.block == "other":
            continue
        b = blocks.setdefault(_block_of(s.name), {"weights": 0, "rows": 0, "img": 0, "txt": 0, "both": 0})
        b["weights"] += s.in_features * s.out_features
        b["rows"] += s.out_features
        context = ".add_" in s.name or ".to_add_out" in s.name or ".ff_context." in s.name
        stream = "both" if s.block == "single" else "txt" if context else "img"
        b[stream] += s.in_features * s.out_features
    hd = arch.attention_head_dim
    norms = [(4 if name.startswith("transformer_blocks.") else 2) * hd for name in blocks]
    assert static.block_bytes(arch, 1, "none") == tuple(
        float(b["weights"] + n) for b, n in zip(blocks.values(), norms)
    )
    assert static.block_bytes(arch, 1, "fp8") == tuple(
        float(b["weights"] + static.FP8_SCALE_BYTES * b["rows"] + n) for b, n in zip(blocks.values(), norms)
    )
    assert timing._block_weights(arch) == tuple((b["img"], b["txt"], b["both"]) for b in blocks.values())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_linear_knows_its_block_and_its_name_inside(variant: str) -> None:
    arch = VARIANTS[variant].transformer
    for s in enumerate_linears(arch):
        if s.block == "other":
            assert (s.order, s.suffix) == (-1, "")
            continue
        kind, i, suffix = s.name.split(".", 2)
        assert suffix == s.suffix
        assert s.order == int(i) + (arch.num_layers if kind == "single_transformer_blocks" else 0)


@pytest.mark.parametrize("tokens", [[t] for t in TARGET_SETS] + [["default", "double-ff"]])
def test_named_sets_resolve_as_the_names_match(tokens: list[str]) -> None:
    arch = VARIANTS["klein-4b"].transformer
    linears = enumerate_linears(arch)
    fast = resolve_targets(tokens, arch, linears)
    # The same sets spelled as explicit globs take the general path.
    globs = []
    for t in tokens:
        double, single, _ = TARGET_SETS[t]
        globs += [f"transformer_blocks.*.{s}" for s in double] + [
            f"single_transformer_blocks.*.{s}" for s in single
        ]
    assert fast == resolve_targets(globs, arch, linears)
    by_block = targets_by_block(arch, fast)
    assert sum(len(b) for kind in by_block for b in kind) == len(fast)
