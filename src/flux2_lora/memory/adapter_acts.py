"""The activation terms of PEFT's LoKr and LoHa layers (lora.type lokr / loha), per block.

Each such layer builds its whole delta weight (out × in) in every forward: LoKr as kron(W1, W2)·scale,
LoHa as HadaWeight's (W1a·W1b) ⊙ (W2a·W2b) · scale. Under the meta-tensor trace these run in fp32: CPU
autocast does not apply to meta tensors, so the fp32 factors' products stay fp32 (on CUDA, autocast makes
the matmuls bf16). What PEFT's ops allocate per layer there, in bytes per weight element w (single layers,
3072/9216/27648 wide, 256-4096 tokens, exact):
- kept for backward: the fp32 delta weight F.linear saves, 4 (both kinds; HadaWeight saves only its
  factors, kron only W1 and W2): :data:`KEPT`, added to the block's kept activations;
- building it: LoHa 12 at once (both products and their ⊙), LoKr 8 (kron's result and its scaled copy),
  the kept 4 included;
- backward: the incoming 4-byte gradient of the delta, and on top of it LoHa 16 (the scaled gradient,
  one product, the first ``temp`` and the second product and ``temp``), LoKr 8 (the scaled gradient and
  kron's two broadcast products): :data:`BACKWARD` (4 + 16, 4 + 8).

The step's adapter peak is the backward of one layer's delta, when the block's other activations are
partly freed: backward runs the block's layers last to first, so at layer L's delta what is alive is

    (the blocks before: their inputs with checkpointing, everything they keep without)
    + ALIVE[L] · tokens · d          what the block keeps from the ops before L, and the gradients in
                                     flight at L (its output's, the pending q/k/v ones, ...)
    + 4 · w of each adapted layer before L in the block (their kept deltas)
    + BACKWARD · w_L

Building a delta in forward (12 or 8 bytes per w) has at most the same before it and less on top, so it is
never the larger. ALIVE is per token of each stream (double blocks: image, text; single blocks: both),
in units of the model width d, read off LoHa traces of reduced klein-4b (2 double + 3 single blocks,
bf16, all-linear, checkpointing, 512 and 1024 px, 512 and 256 text tokens: every per-layer figure moved
by the same bytes per token between them, to 0.01), as the difference between the memory when the
layer's HadaWeightBackward starts and its 4·w; the block inputs and the bytes outside the blocks
(counted apart) are taken off. With all-linear, every earlier layer of the block keeps its fp32 input
copy (4 bytes per input feature per token, PEFT casts the input to the delta's dtype): for a layer that
carries no adapter that copy is taken off. The first LoRA'd block keeps a little less (no gradient for its
input; its q/k/v come out up to 6 bytes per token per d high, on layers too narrow to be the peak).
Checked on cases not read off: LoKr (every case), the default targets, rank 64, 768 px, batch 2, no
checkpointing, klein-9b (tests/memory/test_estimate_options.py).
"""

from __future__ import annotations

import functools

from flux2_lora.targets import block_linears
from flux2_lora.variants import TransformerArch

KEPT = 4.0  # the fp32 delta weight, kept for backward (both kinds)
BACKWARD = {"lokr": 12.0, "loha": 20.0}  # the delta's gradient and what its backward allocates on top

# Bytes per token per d alive at each layer's delta backward besides the block inputs, the bytes outside
# the blocks and the adapter's weight-sized terms (see above): double blocks (image, text) per layer, in
# forward order; single blocks one figure on all tokens.
_DOUBLE_ALIVE: tuple[tuple[str, float, float], ...] = (
    ("attn.to_q", 5.89, 3.89),
    ("attn.to_k", 11.89, 3.89),
    ("attn.to_v", 17.89, 3.89),
    ("attn.add_q_proj", 19.89, 7.89),
    ("attn.add_k_proj", 19.89, 13.89),
    ("attn.add_v_proj", 19.89, 19.89),
    ("attn.to_out.0", 31.98, 33.98),
    ("attn.to_add_out", 33.98, 35.98),
    ("ff.linear_in", 49.98, 37.98),
    ("ff.linear_out", 65.98, 37.98),
    ("ff_context.linear_in", 69.98, 49.98),
    ("ff_context.linear_out", 69.98, 65.98),
)
_SINGLE_ALIVE: tuple[tuple[str, float], ...] = (("attn.to_qkv_mlp_proj", 21.89), ("attn.to_out", 53.98))
_TXT = ("attn.add_", "attn.to_add_out", "ff_context.")

# One layer's terms: (bytes per image token, per text token, bytes independent of the tokens but for
# BACKWARD · w, the layer's w).
_Layer = tuple[float, float, float, float]


@functools.lru_cache(maxsize=256)
def _block_terms(
    arch: TransformerArch, kind: str, targeted: frozenset[str]
) -> tuple[float, tuple[_Layer, ...]]:
    """(the block's kept delta bytes, its adapted layers' terms) for one block's adapted layers."""
    d = arch.inner_dim
    double, single = block_linears(arch)
    widths = {name: (i, o) for name, i, o in (double if kind == "double" else single)}
    single_rows = [(name, a, a) for name, a in _SINGLE_ALIVE]
    rows = list(_DOUBLE_ALIVE) if kind == "double" else single_rows
    layers: list[_Layer] = []
    deltas = 0.0  # kept deltas of the adapted layers before
    copies = [0.0, 0.0]  # fp32 input copies the table counts for earlier layers without an adapter
    for name, img, txt in rows:
        i, o = widths[name]
        w = float(i * o)
        if name in targeted:
            layers.append((img * d - copies[0], txt * d - copies[1], deltas, w))
            deltas += KEPT * w
        else:
            stream = 1 if kind == "double" and name.startswith(_TXT) else 0
            copies[stream] += 4.0 * i
            if kind == "single":
                copies[1] += 4.0 * i
    return deltas, tuple(layers)


def adapter_by_block(
    arch: TransformerArch,
    by_block: tuple[tuple[frozenset[str], ...], tuple[frozenset[str], ...]],
    kind: str,
    img: int,
    txt: int,
    batch: int,
    dtype_bytes: int = 2,
) -> tuple[list[float], list[float]]:
    """(kept delta bytes, the peak of its layers' delta backward) per block in execution order; the peak
    beyond the blocks before it (their inputs under checkpointing, their kept activations without).
    ``by_block``: activations.targets_by_block. fp32 weights: the token terms doubled (not traced)."""
    n = arch.num_layers + arch.num_single_layers
    kept, peak = [0.0] * n, [0.0] * n
    if kind not in BACKWARD:
        return kept, peak
    scale = batch * (2.0 if dtype_bytes == 4 else 1.0)
    seen: dict[tuple[str, frozenset[str]], tuple[float, float]] = {}
    blocks = [("double", t) for t in by_block[0]] + [("single", t) for t in by_block[1]]
    for b, key in enumerate(blocks):
        if key not in seen:
            deltas, layers = _block_terms(arch, *key)
            worst = max(
                (scale * (a * img + t * txt) + dl + BACKWARD[kind] * w for a, t, dl, w in layers), default=0.0
            )
            seen[key] = (deltas, worst)
        kept[b], peak[b] = seen[key]
    return kept, peak
