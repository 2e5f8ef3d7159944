"""The activation terms of PEFT's LoKr and LoHa layers (lora.type lokr / loha), per block, in the slots
the DoRA terms use (memory/activations.py: kept through backward, forward transient, backward transient).

Each such layer builds its whole delta weight (out × in) in every forward: LoKr as kron(W1, W2), LoHa as
the Hadamard product of two rank-r products. What it keeps for backward is 4 bytes per weight element
beyond a LoRA's, whatever the token count (measured exactly on single layers, 3072/9216 wide, 1024/4096
tokens, under the meta-tensor tracker with bf16 autocast, as the trainer runs them). The transients are
fitted to the whole-model trace instead (reduced klein-4b, 512-1024 px, with and without checkpointing,
default and all-linear targets): building the delta adds nothing above the peak a LoRA's transient sets
already, and backward through the products adds 4 (LoKr) / 12 (LoHa) bytes per element of the largest
layer. On those configurations the estimate is within 3.0% (LoKr) / 3.6% (LoHa) of the trace
(tests/memory/test_estimate_options.py checks 4%), from 20-41% under it with a LoRA's figures.
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
