"""Activation memory of the FLUX.2 transformer while training and sampling (pure Python, no torch).

Activations are counted per token and per block from what the block's ops save for backward, in units
of the model width d (bytes per token per d); the coefficients were read off fake-tensor traces of the
real modules (:mod:`flux2_lora.training.trace`) and tests/memory checks the sums against new traces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flux2_lora.targets import LinearSpec
from flux2_lora.variants import TransformerArch

# Bytes saved for backward per token and per d, by stream, for each weight precision: LayerNorm and
# RMSNorm inputs, the SDPA q/k/v/out/logsumexp, the SwiGLU halves and the input of every LoRA layer.
# A stream that only passes the gradient on ("base") keeps less than one whose own Linear layers carry
# LoRA (each LoRA'd Linear keeps its input).
_COEF = {
    2: {
        "double_base": 38.11,
        "double_attn_img": 16.07,
        "double_attn_txt": 18.1,
        "double_ff": 16.04,
        "single_base": 40.10,
        "single_lora": 20.04,
    },
    4: {
        "double_base": 68.13,
        "double_attn_img": 4.05,
        "double_attn_txt": 4.05,
        "double_ff": 16.01,
        "single_base": 64.11,
        "single_lora": 20.04,
    },
}
_ATTN = {
    "img": ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"),
    "txt": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"),
}
_FF = {"img": ("ff.linear_in", "ff.linear_out"), "txt": ("ff_context.linear_in", "ff_context.linear_out")}
_TXT_LAYERS = _ATTN["txt"] + _FF["txt"]

# Gradients alive beyond the kept activations while the last single block runs backward
# ([fp32?][single blocks carry LoRA?]), and, with checkpointing, beyond its recomputation.
_TRANSIENT = {False: {False: 37.9, True: 36.9}, True: {False: 75.9, True: 60.1}}
_TRANSIENT_GC = {False: {False: 35.9, True: 35.8}, True: {False: 71.9, True: 56.1}}
# Outside the blocks: embedders' outputs and the fp32 loss terms, per token per d per weight byte.
_OUTSIDE = 0.225

# The same quantities measured on a GPU (benchmarks/vram/block_probe.py: H200, torch 2.11, bf16
# weights, 1024², the default LoRA targets), which the estimate uses for bf16 weights. CUDA's fused
# kernels keep less per block than the CPU trace (whose RMSNorm and SwiGLU keep fp32 copies). NF4 and
# int8 layers return their input's dtype, so after autocast's fp32 LayerNorm the residual stream runs in
# fp32: each block keeps a 4-byte input under checkpointing, and more without. Transients exclude the
# dequantized weight of quantized layers (counted with the weights). Read off 1+1, 2+1 and 1+2 block
# models: every difference between depths agreed to 0.1 B per token per d.
_CUDA = {
    "none": {"double_base": 31.17, "single_base": 24.33, "input": 2.0, "gc": 42.2, "no_gc": 38.8},
    "nf4": {"double_base": 52.96, "single_base": 50.14, "input": 4.0, "gc": 42.1, "no_gc": 43.2},
    "int8": {"double_base": 87.70, "single_base": 67.46, "input": 4.0, "gc": 38.6, "no_gc": 29.9},
}


def _calibration(dtype_bytes: int, kernels: str, quantization: str) -> dict[str, float]:
    """Per-block coefficients, input bytes and transients (bytes per token per d) for this run."""
    p = _precision(dtype_bytes)
    c = dict(_COEF[p])
    single_lora_transients = {
        "gc": _TRANSIENT_GC[p == 4][True],
        "no_gc": _TRANSIENT[p == 4][True],
        "gc_plain": _TRANSIENT_GC[p == 4][False],
        "no_gc_plain": _TRANSIENT[p == 4][False],
    }
    c.update(input=float(dtype_bytes), **single_lora_transients)
    if kernels == "cuda" and p == 2:
        cuda = _CUDA.get(quantization, _CUDA["none"])
        c.update(double_base=cuda["double_base"], single_base=cuda["single_base"], input=cuda["input"])
        # Without single-block LoRA only the traced ratio is known: scale it by the measured one.
        c["gc_plain"] *= cuda["gc"] / c["gc"]
        c["no_gc_plain"] *= cuda["no_gc"] / c["no_gc"]
        c["gc"], c["no_gc"] = cuda["gc"], cuda["no_gc"]
    return c


def _transient(c: dict[str, float], checkpointing: bool, single_lora: bool) -> float:
    key = "gc" if checkpointing else "no_gc"
    return c[key if single_lora else key + "_plain"]


# DoRA (PEFT): each adapted Linear also keeps its base output and its scaled LoRA output for the
# magnitude's gradient (bytes per token per output feature); its forward builds the dense weight
# W + s·BA and its norm in fp32 (a·in·out + 4·in² bytes: PEFT multiplies an identity matrix through
# the adapter); its backward holds fp32 gradients of T×out elements (in fp32 runs the plain gradient
# transient is larger, so nothing is added there). Read off traces of one PEFT layer and of blocks.
_DORA_KEPT = {2: 6.0, 4: 8.0}
_DORA_DENSE = {2: 14.5, 4: 12.0}
_DORA_GRAD = {2: 11.3, 4: 0.0}

# Sampling (no grad): the largest transient of one forward is a base per token per d, plus, for the
# widest LoRA'd layer, PEFT's fp32 input copy and extra outputs (bytes per token per output feature
# beyond d, by block type); with DoRA instead its dense weight (bytes per weight) and fp32 outputs (bytes per
# token per output feature). Fitted to traces at two resolutions; DoRA on narrow (d×d) layers comes
# out high, which is harmless: training needs more than sampling for those.
_INFER_BASE = {2: 43.5, 4: 86.4}
_INFER_LORA = {2: {"single": 6.975, "double": 5.46}, 4: {"single": 4.0, "double": 0.0}}
_INFER_DORA = {
    2: {"single": (8.04, 14.14), "double": (10.5, 10.54)},
    4: {"single": (4.08, 11.38), "double": (5.51, 6.41)},
}


def _precision(dtype_bytes: int) -> int:
    return 4 if dtype_bytes == 4 else 2


def _block_index(arch: TransformerArch, spec: LinearSpec) -> int | None:
    """Where a layer's block runs (double blocks first), None outside the blocks."""
    return None if spec.order < 0 else spec.order


def stream_tokens(spec: LinearSpec, img: int, txt: int) -> int:
    """Tokens a Linear layer sees: single blocks run on both streams, double blocks on one."""
    if spec.block == "single":
        return img + txt
    return txt if spec.name.endswith(_TXT_LAYERS) else img


def _fractions(arch: TransformerArch, targeted: frozenset[str], names: tuple[str, ...]) -> float:
    """Share of a layer group's input width that carries LoRA (each LoRA'd layer keeps its input);
    ``targeted``: the block's LoRA'd layers, by name inside the block."""
    d, m = arch.inner_dim, arch.mlp_hidden_dim
    width = {"linear_out": m, "to_out": d + m}
    total = hit = 0.0
    for n in names:
        w = width.get(n.rsplit(".", 1)[-1], d) if not n.endswith("to_out.0") else d
        total += w
        hit += w if n in targeted else 0.0
    return hit / total


# The LoRA'd layers of each double and each single block (names inside the block), in order.
ByBlock = tuple[tuple[frozenset[str], ...], tuple[frozenset[str], ...]]


def targets_by_block(arch: TransformerArch, specs: Sequence[LinearSpec]) -> ByBlock:
    """The LoRA'd layers of each block (what callers with many estimates of one target list cache)."""
    double: list[set[str]] = [set() for _ in range(arch.num_layers)]
    single: list[set[str]] = [set() for _ in range(arch.num_single_layers)]
    n = arch.num_layers
    for s in specs:
        if s.order >= 0:
            (double[s.order] if s.order < n else single[s.order - n]).add(s.suffix)
    return tuple(frozenset(b) for b in double), tuple(frozenset(b) for b in single)


def block_activation_bytes(
    arch: TransformerArch,
    specs: list[LinearSpec],
    dtype_bytes: int,
    img: int,
    txt: int,
    kernels: str = "cuda",
    quantization: str = "none",
) -> list[float]:
    """Bytes each block keeps for backward (batch 1, no checkpointing, no DoRA), in execution order.

    Blocks before the first one with LoRA keep nothing: no gradient has to pass through them.
    ``kernels``: "cuda" (the GPU calibration) or "trace" (the CPU meta-tensor trace's own figures)."""
    c = _calibration(dtype_bytes, kernels, quantization)
    return _block_bytes(arch, targets_by_block(arch, specs), c, img, txt)


def _block_bytes(
    arch: TransformerArch, by_block: ByBlock, c: dict[str, float], img: int, txt: int
) -> list[float]:
    d = arch.inner_dim
    double, single = by_block
    # Blocks with the same LoRA'd layers keep the same bytes: each distinct set is computed once.
    seen: dict[frozenset[str], tuple[float, bool]] = {}
    out: list[float] = []
    grad_flows = False
    for targeted in double:
        if targeted not in seen:
            total, flows = 0.0, False
            for stream, tokens in (("img", img), ("txt", txt)):
                attn = _fractions(arch, targeted, _ATTN[stream])
                ff = _fractions(arch, targeted, _FF[stream])
                flows = flows or attn > 0 or ff > 0
                per = c["double_base"] + c[f"double_attn_{stream}"] * attn + c["double_ff"] * ff
                total += per * tokens * d
            seen[targeted] = (total, flows)
        total, flows = seen[targeted]
        grad_flows = grad_flows or flows
        out.append(total if grad_flows else 0.0)
    for targeted in single:
        if targeted not in seen:
            lora = _fractions(arch, targeted, ("attn.to_qkv_mlp_proj", "attn.to_out"))
            seen[targeted] = ((c["single_base"] + c["single_lora"] * lora) * (img + txt) * d, lora > 0)
        total, flows = seen[targeted]
        grad_flows = grad_flows or flows
        out.append(total if grad_flows else 0.0)
    return out


# The first double block with LoRA keeps less: nothing before a stream's first LoRA layer needs a
# gradient (bytes per token per d of that stream at bf16, by where that first layer sits: q/k/v,
# attention output, feed-forward in, feed-forward out). A stream without LoRA there keeps its
# pre-attention part only if the other stream's q/k/v carry LoRA (attention mixes the streams), and
# else nothing at all (nor its pre-attention part in the next block). Fitted to traces.
_FIRST_POSITION = (0.0, 16.0, 17.0, 36.0)
_FIRST_NONE_MIXED = {"img": 8.0, "txt": 4.0}
_FIRST_NONE = 42.0
_POSITIONS = {
    "img": (
        ("attn.to_q", "attn.to_k", "attn.to_v"),
        ("attn.to_out.0",),
        ("ff.linear_in",),
        ("ff.linear_out",),
    ),
    "txt": (
        ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
        ("attn.to_add_out",),
        ("ff_context.linear_in",),
        ("ff_context.linear_out",),
    ),
}


def first_block_discount(
    arch: TransformerArch, specs: list[LinearSpec], dtype_bytes: int, img: int, txt: int
) -> float:
    """Bytes (batch 1) the first LoRA'd block keeps less than :func:`block_activation_bytes` counts."""
    return _first_discount(arch, targets_by_block(arch, specs), dtype_bytes, img, txt)


def _first_discount(arch: TransformerArch, by_block: ByBlock, dtype_bytes: int, img: int, txt: int) -> float:
    for targeted in by_block[0]:
        first = {
            stream: next((k for k, names in enumerate(pos) if any(n in targeted for n in names)), None)
            for stream, pos in _POSITIONS.items()
        }
        if first["img"] is None and first["txt"] is None:
            continue
        total = 0.0
        for stream, tokens in (("img", img), ("txt", txt)):
            other = first["txt" if stream == "img" else "img"]
            k = first[stream]
            per = (
                _FIRST_POSITION[k]
                if k is not None
                else _FIRST_NONE_MIXED[stream]
                if other == 0
                else _FIRST_NONE
            )
            total += per * tokens
        return total * arch.inner_dim * dtype_bytes / 2
    return 0.0  # the first LoRA'd block is a single block: counted in full


def _dora_by_block(
    arch: TransformerArch,
    specs: list[LinearSpec],
    dtype_bytes: int,
    img: int,
    txt: int,
    batch: int,
    dense_per_weight: float | None = None,
) -> tuple[list[float], list[float], list[float]]:
    """Per block, in execution order: DoRA's kept bytes, forward dense transient, backward gradients."""
    p = _precision(dtype_bytes)
    n = arch.num_layers + arch.num_single_layers
    kept, dense, grads = [0.0] * n, [0.0] * n, [0.0] * n
    for s in specs:
        i = _block_index(arch, s)
        if i is None:
            continue
        t = batch * stream_tokens(s, img, txt)
        kept[i] += _DORA_KEPT[p] * t * s.out_features
        per_weight = _DORA_DENSE[p] if dense_per_weight is None else dense_per_weight
        dense[i] = max(dense[i], per_weight * s.weight_numel + 4.0 * s.in_features**2)
        grads[i] = max(grads[i], _DORA_GRAD[p] * t * s.out_features)
    return kept, dense, grads


@dataclass(frozen=True)
class _Step:
    """What the training step's activation figures start from, for one batch: the bytes each block keeps
    (in execution order; 0 before the first block with LoRA), DoRA's per-block terms, the gradient
    transient, the bytes outside the blocks, and the first LoRA'd block's discount."""

    c: dict[str, float]  # the calibration (see _calibration)
    tokens_d: int  # tokens × model width
    blocks: list[float]
    flowing: list[bool]  # a gradient passes through the block
    first: int | None  # the first block with LoRA
    discount: float  # what that block keeps less (first_block_discount × batch)
    block_input: float  # a block's input, what checkpointing keeps of it
    transient: float
    outside: float
    single_lora: bool
    d_kept: list[float]
    d_dense: list[float]
    d_grads: list[float]
    # LoKr/LoHa: each block's worst delta backward beyond the blocks before it (memory/adapter_acts.py)
    a_peak: list[float]

    def kept(self) -> list[float]:
        """Bytes each block keeps through backward without checkpointing (DoRA's terms included)."""
        kept = [b + k for b, k in zip(self.blocks, self.d_kept, strict=True)]
        if self.first is not None:
            kept[self.first] -= self.discount
        return kept


def _step(
    arch: TransformerArch,
    specs: list[LinearSpec],
    *,
    dtype_bytes: int,
    img: int,
    txt: int,
    batch: int,
    checkpointing: bool,
    dora: bool,
    kernels: str,
    quantization: str,
    dora_dense: float | None = None,
    by_block: ByBlock | None = None,
    adapter: str = "lora",
) -> _Step:
    c = _calibration(dtype_bytes, kernels, quantization)
    tokens_d = (img + txt) * arch.inner_dim
    if by_block is None:
        by_block = targets_by_block(arch, specs)
    blocks = [batch * b for b in _block_bytes(arch, by_block, c, img, txt)]
    flowing = [b > 0 for b in blocks]
    first = next((i for i, f in enumerate(flowing) if f), None)
    single_lora = any(s.block == "single" for s in specs)
    n = len(blocks)
    if dora:
        d_kept, d_dense, d_grads = _dora_by_block(arch, specs, dtype_bytes, img, txt, batch, dora_dense)
    else:
        d_kept = d_dense = d_grads = [0.0] * n
    a_peak = [0.0] * n
    if adapter != "lora":  # LoKr / LoHa: their kept delta weights, and the backward of one at a time
        from flux2_lora.memory.adapter_acts import adapter_by_block

        a_kept, a_peak = adapter_by_block(arch, by_block, adapter, img, txt, batch, dtype_bytes)
        d_kept = [x + y for x, y in zip(d_kept, a_kept, strict=True)]
    return _Step(
        c=c,
        tokens_d=tokens_d,
        blocks=blocks,
        flowing=flowing,
        first=first,
        discount=0.0 if first is None else batch * _first_discount(arch, by_block, dtype_bytes, img, txt),
        block_input=c["input"] * tokens_d * batch,
        transient=_transient(c, checkpointing, single_lora) * tokens_d * batch,
        outside=batch * _OUTSIDE * dtype_bytes * tokens_d,
        single_lora=single_lora,
        d_kept=d_kept,
        d_dense=d_dense,
        d_grads=d_grads,
        a_peak=a_peak,
    )


def training_activations(
    arch: TransformerArch,
    specs: list[LinearSpec],
    *,
    dtype_bytes: int,
    img: int,
    txt: int,
    batch: int,
    checkpointing: bool,
    dora: bool,
    kernels: str = "cuda",
    quantization: str = "none",
) -> float:
    """Peak bytes above the static memory during forward and backward of one training step."""
    return training_step_activations(
        arch,
        specs,
        dtype_bytes=dtype_bytes,
        img=img,
        txt=txt,
        batch=batch,
        checkpointing=checkpointing,
        dora=dora,
        kernels=kernels,
        quantization=quantization,
    )[0]


def end_of_backward_activations(
    arch: TransformerArch,
    specs: list[LinearSpec],
    *,
    dtype_bytes: int,
    img: int,
    txt: int,
    batch: int,
    checkpointing: bool,
    kernels: str = "cuda",
    quantization: str = "none",
) -> float:
    """Activation bytes alive while the first LoRA'd block runs backward, the moment every later
    block's LoRA gradients already exist: at large ranks the gradients outweigh the activations that
    backward has freed by then, and this is the step's peak."""
    return training_step_activations(
        arch,
        specs,
        dtype_bytes=dtype_bytes,
        img=img,
        txt=txt,
        batch=batch,
        checkpointing=checkpointing,
        dora=False,  # DoRA's terms are not alive then
        kernels=kernels,
        quantization=quantization,
    )[1]


def training_step_activations(
    arch: TransformerArch,
    specs: list[LinearSpec],
    *,
    dtype_bytes: int,
    img: int,
    txt: int,
    batch: int,
    checkpointing: bool,
    dora: bool,
    kernels: str = "cuda",
    quantization: str = "none",
    by_block: ByBlock | None = None,
    adapter: str = "lora",
) -> tuple[float, float]:
    """(:func:`training_activations`, :func:`end_of_backward_activations`) from one prelude;
    ``by_block``: :func:`targets_by_block` of ``specs``, if the caller has it; ``adapter``: lora.type."""
    st = _step(
        arch,
        specs,
        dtype_bytes=dtype_bytes,
        img=img,
        txt=txt,
        batch=batch,
        checkpointing=checkpointing,
        dora=dora,
        kernels=kernels,
        quantization=quantization,
        by_block=by_block,
        adapter=adapter,
    )
    return _step_peak(arch, st, checkpointing), _end_of_backward(st, checkpointing)


def _step_peak(arch: TransformerArch, st: _Step, checkpointing: bool) -> float:
    blocks, d_kept, d_dense, d_grads = st.blocks, st.d_kept, st.d_dense, st.d_grads
    n = len(blocks)
    if checkpointing:
        # Each block keeps only its input; backward recomputes one block at a time while the inputs of
        # the blocks before it are alive, and holds that block's activations plus gradients.
        inputs = [st.block_input if f else 0.0 for f in st.flowing]
        last_single = blocks[-1] if arch.num_single_layers else 0.0
        peak = sum(inputs) + last_single + d_kept[-1] + st.transient
        for i in range(n):
            # With DoRA, the recomputation of block i also builds the dense weight, then its gradients.
            extra = max(d_dense[i], d_grads[i])
            if extra:
                recompute = sum(inputs[: i + 1]) + blocks[i] + d_kept[i]
                peak = max(peak, recompute + extra)
            if st.a_peak[i]:
                peak = max(peak, sum(inputs[: i + 1]) + st.a_peak[i])
    else:
        kept_by_block = st.kept()
        peak = sum(kept_by_block) + st.transient
        prefix = 0.0
        for i in range(n):
            if st.a_peak[i]:
                peak = max(peak, prefix + st.a_peak[i])
            prefix += kept_by_block[i]
            # DoRA's dense weight (forward) and gradients (backward) come while the blocks up to i hold
            # their activations; the plain gradient transient is counted at the last block.
            extra = max(d_dense[i], d_grads[i])
            if extra:
                peak = max(peak, prefix + extra)
    return peak + st.outside


def _end_of_backward(st: _Step, checkpointing: bool) -> float:
    if st.first is None:
        return 0.0
    kept = st.blocks[st.first] - st.discount  # DoRA's terms of the block are not counted here
    if checkpointing:
        kept += st.block_input  # its input, from which it is recomputed
    return kept + st.transient + st.outside


def inference_transient(
    arch: TransformerArch, specs: list[LinearSpec], *, dtype_bytes: int, img: int, txt: int, dora: bool
) -> float:
    """Largest transient of one no-grad forward at batch 1 (a validation sampling step)."""
    p = _precision(dtype_bytes)
    d = arch.inner_dim
    # The text embeddings enter at joint_attention_dim before the context embedder projects them.
    base = _INFER_BASE[p] * (img + txt) * d + dtype_bytes * txt * arch.joint_attention_dim
    per_dora, per_lora = _INFER_DORA[p], _INFER_LORA[p]
    extra = 0.0
    # Every block of a kind has the same layers: each distinct one is enough for the largest.
    for s in {(s.block, s.suffix): s for s in specs if s.order >= 0}.values():
        tokens = stream_tokens(s, img, txt)
        if dora:
            per_weight, per_out = per_dora[s.block]
            extra = max(extra, per_weight * s.weight_numel + per_out * (tokens * s.out_features))
        elif s.out_features > d:
            # Layers no wider than d add nothing visible: the block's own tensors are larger then.
            extra = max(extra, per_lora[s.block] * (tokens * (s.out_features - d)))
    return base + extra


# The gradient transient while a double block runs backward, which only FSDP's per-block gathering
# exposes (without it, the step peaks at the last single block): bytes per token per d by
# [fp32?][checkpointing?], read off fully_shard traces of [klein] blocks with the default LoRA targets
# (more targets in the double blocks lower it, so these err high there).
_DOUBLE_TRANSIENT = {False: {True: 17.7, False: 21.1}, True: {True: 18.6, False: 13.2}}
# Under FSDP with bf16 weights the LoRA is gathered in bf16, so PEFT makes no fp32 copy of a LoRA layer's
# input: each LoRA'd layer keeps 2 bytes per input element less, and backward a constant less besides
# (bytes per token per d by checkpointing), read off the same traces ([klein] 4B and 9B, 512–1024 px).
_FSDP_BF16_LESS = {True: 5.0, False: 15.0}
# DoRA's dense weight W + s·BA and its norm, built in bf16 there (bytes per weight; fp32: 14.5).
_FSDP_BF16_DORA_DENSE = 5.4


def activation_profile(
    arch: TransformerArch,
    specs: list[LinearSpec],
    *,
    dtype_bytes: int,
    img: int,
    txt: int,
    batch: int,
    checkpointing: bool,
    dora: bool,
    kernels: str = "cuda",
    quantization: str = "none",
    bf16_lora: bool = False,
    by_block: ByBlock | None = None,
) -> tuple[list[float], list[float]]:
    """Per block, in execution order: the activation bytes alive when its forward starts (what the blocks
    before it keep, and its input), and while its backward runs (with checkpointing: the inputs up to it
    and its recomputed activations; without: everything kept up to it), each with the step's gradient
    transient in backward, and the bytes outside the blocks. What FSDP's per-block gathering is
    paired with (:mod:`flux2_lora.memory.sharded`). ``bf16_lora``: FSDP's bf16 LoRA (see _FSDP_BF16_LESS);
    ``by_block`` as for :func:`training_step_activations`."""
    fsdp_bf16 = bf16_lora and _precision(dtype_bytes) == 2
    st = _step(
        arch,
        specs,
        dtype_bytes=dtype_bytes,
        img=img,
        txt=txt,
        batch=batch,
        checkpointing=checkpointing,
        dora=dora,
        kernels=kernels,
        quantization=quantization,
        dora_dense=_FSDP_BF16_DORA_DENSE if dora and fsdp_bf16 else None,
        by_block=by_block,
    )
    c, tokens_d, blocks, transient, block_input = st.c, st.tokens_d, st.blocks, st.transient, st.block_input
    d_kept, d_dense, d_grads = st.d_kept, st.d_dense, st.d_grads
    n = len(blocks)
    # Scaled like the single blocks' transient when the GPU calibration replaces the trace's.
    traced = _transient(_calibration(dtype_bytes, "trace", "none"), checkpointing, True)
    double = _DOUBLE_TRANSIENT[_precision(dtype_bytes) == 4][checkpointing]
    double *= _transient(c, checkpointing, True) / traced * tokens_d * batch
    kept = [block_input if f else 0.0 for f in st.flowing] if checkpointing else st.kept()
    less = [0.0] * n  # FSDP's bf16 LoRA: no fp32 input copies
    base_less = 0.0
    if fsdp_bf16:
        for s in specs:
            i = _block_index(arch, s)
            if i is not None:
                less[i] += 2.0 * batch * stream_tokens(s, img, txt) * s.in_features
        base_less = _FSDP_BF16_LESS[checkpointing] * tokens_d * batch
        # With checkpointing only the recomputed block's activations hold the copies.
        kept_less = [0.0] * n if checkpointing else less
        kept = [k - x for k, x in zip(kept, kept_less, strict=True)]
        blocks = [b - x if checkpointing else b for b, x in zip(blocks, less, strict=True)]
    forward, backward, before = [], [], st.outside
    for i in range(n):
        forward.append(before + block_input)
        before += kept[i]
        extra = max(d_dense[i], d_grads[i])
        grad = double if i < arch.num_layers else transient
        if checkpointing:
            backward.append(before + blocks[i] + d_kept[i] + max(grad, extra) - base_less)
        else:
            backward.append(before + max(grad, extra) - base_less)
    return forward, backward
