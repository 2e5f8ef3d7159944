"""LoKr and LoHa (lora.type): the estimate's trainable tensors equal PEFT's, tensor by tensor."""

from __future__ import annotations

import pytest

from flux2_lora.memory import estimate
from flux2_lora.memory.adapters import AdapterKind, adapter_tensors, factorization
from flux2_lora.memory.static import target_specs
from flux2_lora.variants import VARIANTS

from .matrix import HUB, config

KINDS = [
    ("lokr", []),
    ("lokr", ["lora.lokr_factor=16"]),
    ("lokr", ["lora.lokr_factor=4", "lora.lokr_decompose_both=true"]),
    ("lokr", ["lora.lokr_factor=7"]),  # divides no FLUX.2 width: the nearest split
    ("loha", []),
]


@pytest.mark.parametrize("variant", ["klein-4b", "demo"])
@pytest.mark.parametrize(("kind", "extra"), KINDS, ids=lambda v: str(v))
@pytest.mark.parametrize("rank", [4, 64])
def test_adapter_tensors_equal_peft_on_a_meta_model(
    variant: str, kind: str, extra: list[str], rank: int
) -> None:
    import torch
    from diffusers import Flux2Transformer2DModel

    from flux2_lora.training.model import inject_lora

    path = "demo" if variant == "demo" else HUB[variant]
    c = config(
        f"model.path={path}",
        f"lora.type={kind}",
        f"lora.rank={rank}",
        "lora.target_modules=[all-linear]",
        "lora.dropout=0",
        *extra,
        variant="klein-4b",
    )
    arch = VARIANTS[variant].transformer
    with torch.device("meta"):
        model = Flux2Transformer2DModel(**arch.diffusers_config())
        model.requires_grad_(False)
        peft_count = inject_lora(model, c.lora, arch)
    peft_shapes = sorted(tuple(p.shape) for p in model.parameters() if p.requires_grad)
    assert all(len(s) == 2 for s in peft_shapes)
    ours = AdapterKind(kind, c.lora.lokr_factor, c.lora.lokr_decompose_both)
    shapes = [
        t
        for s in target_specs(tuple(c.lora.target_modules), arch)
        for t in adapter_tensors(s.in_features, s.out_features, rank, False, ours)
    ]
    assert sorted(shapes) == peft_shapes  # per tensor: what 8-bit AdamW and Adafactor are sized by
    assert estimate(c).trainable_params == peft_count
    lora = estimate(config(f"model.path={path}", f"lora.rank={rank}", "lora.target_modules=[all-linear]"))
    assert (peft_count < lora.trainable_params) == (kind == "lokr")  # LoKr is the small one


@pytest.mark.parametrize("dimension", [1, 7, 48, 128, 3072, 9216, 27648])
@pytest.mark.parametrize("factor", [-1, 4, 16, 7, 100])
def test_factorization_is_peft_s(dimension: int, factor: int) -> None:
    from peft.tuners.lokr.layer import factorization as peft_factorization

    assert factorization(dimension, factor) == peft_factorization(dimension, factor)


def test_the_estimate_says_what_it_does_not_count_for_lokr() -> None:
    notes = estimate(config("lora.type=lokr", "lora.dropout=0", variant="klein-4b")).notes
    assert any("lora.type lokr" in n and "sampling does not" in n for n in notes)
    assert not any("lora.type" in n for n in estimate(config(variant="klein-4b")).notes)
