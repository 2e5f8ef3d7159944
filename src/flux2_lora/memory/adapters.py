"""The trainable tensors of each adapter kind (lora.type) on one Linear layer, as PEFT creates them
(pure Python, no torch): what the estimate counts parameters, gradients and optimizer state from.

- lora: A (r × in), B (out × r), and DoRA's magnitude (out × 1);
- loha (peft.tuners.loha): two rank-r products, hada_w1_a/w2_a (out × r) and hada_w1_b/w2_b (r × in);
- lokr (peft.tuners.lokr): in = in_m·in_n and out = out_l·out_k are split by :func:`factorization`;
  W1 (out_l × in_m) is a full matrix unless lokr_decompose_both and r < max(out_l, in_m)/2, W2
  (out_k × in_n) is split into rank-r factors when r < max(out_k, in_n)/2.
"""

from __future__ import annotations

from typing import NamedTuple

from flux2_lora.config import LoraSection


class AdapterKind(NamedTuple):
    """What an adapter's tensor shapes depend on besides the layer (a cache key: hashable)."""

    type: str = "lora"
    lokr_factor: int = 0  # 0: PEFT's -1 (the split nearest the square root)
    lokr_decompose_both: bool = False


LORA = AdapterKind()


def adapter_kind(lora: LoraSection) -> AdapterKind:
    """The kind a config's ``lora`` section trains."""
    return AdapterKind(lora.type, lora.lokr_factor, lora.lokr_decompose_both)


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """PEFT's ``peft.tuners.lokr.layer.factorization`` (same algorithm, so the same shapes): (m, n) with
    m·n = dimension and m ≤ n; m = factor when it divides, else the divisor pair nearest the square root
    with m ≤ factor."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    length = m + n
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > length or new_m > factor:
            break
        m, n = new_m, new_n
    if m > n:
        n, m = m, n
    return m, n


def adapter_tensors(
    in_features: int, out_features: int, rank: int, dora: bool, kind: AdapterKind = LORA
) -> list[tuple[int, int]]:
    """(rows, cols) of every trainable tensor the adapter adds to one Linear layer."""
    if kind.type == "loha":
        return [(out_features, rank), (rank, in_features)] * 2
    if kind.type == "lokr":
        factor = kind.lokr_factor or -1
        in_m, in_n = factorization(in_features, factor)
        out_l, out_k = factorization(out_features, factor)
        out: list[tuple[int, int]] = []
        if kind.lokr_decompose_both and rank < max(out_l, in_m) / 2:
            out += [(out_l, rank), (rank, in_m)]
        else:
            out.append((out_l, in_m))
        if rank < max(out_k, in_n) / 2:
            out += [(out_k, rank), (rank, in_n)]
        else:
            out.append((out_k, in_n))
        return out
    return [(rank, in_features), (out_features, rank)] + ([(out_features, 1)] if dora else [])
