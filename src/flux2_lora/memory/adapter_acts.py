"""The activation terms of PEFT's LoKr and LoHa layers (lora.type lokr / loha), per block, in the slots
the DoRA terms use (memory/activations.py: kept through backward, forward transient, backward transient).

Each such layer builds its whole delta weight (out × in) in every forward: LoKr as kron(W1, W2)·scale,
LoHa as HadaWeight's (W1a·W1b) ⊙ (W2a·W2b) · scale. Under the meta-tensor trace these run in fp32: CPU
autocast does not apply to meta tensors, so the fp32 factors' products stay fp32 (on CUDA, autocast makes
the matmuls bf16). What PEFT's ops allocate per layer there, in bytes per weight element w (single layers,
3072/9216/27648 wide, 256-4096 tokens, exact):
- kept for backward: the fp32 delta weight F.linear saves, 4 (both kinds; HadaWeight saves only its
  factors, kron only W1 and W2);
- building it: LoHa 12 at once (both products and their ⊙), LoKr 8 (kron's result and its scaled copy),
  the kept 4 included;
- backward, on top of the incoming 4-byte gradient of the delta (the delta itself is released by then):
  LoHa 16 (the scaled gradient, one product, the first ``temp`` and the second product and ``temp``),
  LoKr 8 (the scaled gradient and kron's two broadcast products).
The slots below are not those exact figures: the block-level terms they are added to (the block's kept
activations, all of its layers' kept deltas) are those of the whole block, while at the backward of a
block's first layer most of them are already freed and that layer's gradients are alive instead, a
difference that scales with the token count. Without the token count here, KEPT/DENSE/GRADS are fitted
(reduced klein-4b, 512-768 px and 1024 px all-linear, with and without checkpointing): within 2% (LoKr)
/ 3.3% (LoHa) there, but LoHa at 1024 px with the default targets is ~8% over (rank 16 or 64).
"""

from __future__ import annotations

from flux2_lora.memory.static import LinearSpec
from flux2_lora.variants import TransformerArch

KEPT = 4.0  # the fp32 delta weight, kept for backward (both kinds)
DENSE = {"lokr": 0.0, "loha": 0.0}  # building it, above what is kept (fitted)
GRADS = {"lokr": 4.0, "loha": 12.0}  # backward through the products (fitted)


def adapter_by_block(
    arch: TransformerArch, specs: list[LinearSpec], kind: str, block_index: object
) -> tuple[list[float], list[float], list[float]]:
    """(kept, forward transient, backward transient) bytes per block in execution order."""
    n = arch.num_layers + arch.num_single_layers
    kept, dense, grads = [0.0] * n, [0.0] * n, [0.0] * n
    if kind not in DENSE:
        return kept, dense, grads
    for s in specs:
        i = block_index(arch, s)  # type: ignore[operator]
        if i is None:
            continue
        w = float(s.in_features * s.out_features)
        kept[i] += KEPT * w
        dense[i] = max(dense[i], DENSE[kind] * w)
        grads[i] = max(grads[i], GRADS[kind] * w)
    return kept, dense, grads
