"""GPU memory of one FSDP process (PyTorch FSDP2 as the trainer applies it; pure Python, no torch).

Each of N processes keeps 1/N of every parameter (FSDP2 splits each tensor along its first dimension,
rounding up, so rank 0 holds the largest piece): the frozen weights in their dtype, the fp32 LoRA, and
so its fp32 gradients and optimizer state. The transformer runs one unit at a time, a unit being a block
(the root, i.e. the embedders, modulation and output layers, is one unit too). A unit is all-gathered in
the compute dtype into a flat buffer, then copied out into its unsharded parameters. What is alive, read
off real ``fully_shard`` runs under a fake process group (:mod:`flux2_lora.training.trace_fsdp`):

- forward, at the copy-out of unit k: the previous unit's flat buffer (FSDP keeps it until the next
  all-gather completes, so that the communication stream never writes memory still in use), unit k's
  flat buffer and its unsharded parameters: ``prev + 2 × unit k``, with the root unsharded throughout;
- backward, while unit k runs: its unsharded parameters, the next unit's prefetched flat buffer, the root,
  and unit k's unsharded LoRA gradients in the compute dtype with their fp32 copy for the
  reduce-scatter;
- the activations are those of the unsharded model, paired with each moment
  (:func:`~flux2_lora.memory.activations.activation_profile`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from flux2_lora.targets import LinearSpec
from flux2_lora.variants import TransformerArch


def _shard(rows: int, n: int) -> int:
    return -(-rows // n)  # rank 0's rows: FSDP2 pads the last ranks, never the first


@dataclass(frozen=True)
class FsdpLayout:
    """Bytes of one rank's shards and of each gathered unit (execution order), and LoRA element counts."""

    sharded_weights: float  # frozen weights, this rank's shard, in the weight dtype
    sharded_lora: int  # LoRA elements of this rank's shard (fp32 master, gradients, optimizer state)
    root: float  # the root unit gathered, in the compute dtype
    units: tuple[float, ...]  # each block gathered, in the compute dtype
    unit_lora: tuple[int, ...]  # LoRA elements of each block (its unsharded gradients)


def _unit(spec: LinearSpec) -> str:
    """The FSDP unit of a layer: its block ("transformer_blocks.3"), or "" (the root)."""
    if spec.block == "other":
        return ""
    name = spec.name
    return name[: name.index(".", name.index(".") + 1)]


# The parameters of each FSDP unit ("" is the root): (first dimension, elements per row) of each tensor.
Units = dict[str, tuple[tuple[int, int], ...]]


def frozen_params(arch: TransformerArch, linears: Sequence[LinearSpec]) -> Units:
    """Every frozen parameter, by unit (depends on the architecture only: callers cache it)."""
    out: dict[str, list[tuple[int, int]]] = {"": []}
    for s in linears:
        out.setdefault(_unit(s), []).append((s.out_features, s.in_features))
    hd = arch.attention_head_dim
    for i in range(arch.num_layers):  # q/k RMSNorm scales of both streams
        out[f"transformer_blocks.{i}"] += [(hd, 1)] * 4
    for i in range(arch.num_single_layers):
        out[f"single_transformer_blocks.{i}"] += [(hd, 1)] * 2
    return {u: tuple(t) for u, t in out.items()}


def lora_params(specs: Sequence[LinearSpec], rank: int, dora: bool) -> Units:
    """The LoRA's tensors (A, B and DoRA's magnitude), by unit."""
    out: dict[str, list[tuple[int, int]]] = {}
    for s in specs:
        tensors = out.setdefault(_unit(s), [])
        tensors += [(rank, s.in_features), (s.out_features, rank)]
        if dora:
            tensors.append((s.out_features, 1))
    return {u: tuple(t) for u, t in out.items()}


def fsdp_layout(arch: TransformerArch, frozen: Units, lora: Units, weight_bytes: int, n: int) -> FsdpLayout:
    """One rank's shards over ``n`` processes (``frozen``: :func:`frozen_params`; ``lora``:
    :func:`lora_params`)."""
    order = [f"transformer_blocks.{i}" for i in range(arch.num_layers)]
    order += [f"single_transformer_blocks.{i}" for i in range(arch.num_single_layers)]
    # Bytes are whole numbers (exact in a float), so they are summed unit by unit, and units of the
    # same shapes (every double block, every single block) are computed once.
    seen: dict[tuple[tuple[int, int], ...], tuple[int, int]] = {}

    def sizes(tensors: tuple[tuple[int, int], ...]) -> tuple[int, int]:
        """(elements of this rank's shards, elements all-gathered with FSDP2's padding)."""
        if tensors not in seen:
            seen[tensors] = (
                sum(_shard(r, n) * c for r, c in tensors),
                sum(_shard(r, n) * n * c for r, c in tensors),
            )
        return seen[tensors]

    gathered = dict.fromkeys(["", *order], 0.0)
    sharded_weights = sharded_lora = 0
    for unit, tensors in frozen.items():
        shard, whole = sizes(tensors)
        sharded_weights += shard * weight_bytes
        gathered[unit] += whole * weight_bytes  # the all-gather's padded size
    for unit, tensors in lora.items():
        shard, whole = sizes(tensors)
        sharded_lora += shard
        gathered[unit] += whole * weight_bytes
    return FsdpLayout(
        sharded_weights=sharded_weights,
        sharded_lora=sharded_lora,
        root=gathered[""],
        units=tuple(gathered[u] for u in order),
        unit_lora=tuple(sum(r * c for r, c in lora.get(u, ())) for u in order),
    )


def gathered_forward(
    layout: FsdpLayout, forward_acts: list[float], reshard: bool = True
) -> tuple[float, float]:
    """(gathered bytes, activation bytes) at the forward moment that holds the most of both: the
    copy-out of a unit, with the previous unit's flat buffer still alive and the root unsharded.
    Without ``reshard`` (after forward) every unit before it stays unsharded too."""
    best = (0.0, 0.0)
    prev = layout.root  # the root's flat buffer lives until the first block's copy-out
    kept = 0.0
    for unit, acts in zip(layout.units, forward_acts, strict=True):
        candidate = (layout.root + prev + 2 * unit + kept, acts)
        if sum(candidate) > sum(best):
            best = candidate
        prev = unit
        if not reshard:
            kept += unit
    return best


def gathered_backward(
    layout: FsdpLayout, backward_acts: list[float], weight_bytes: int, reshard: bool = True
) -> tuple[float, float, float]:
    """(gathered bytes, activation bytes, unsharded gradient bytes) at the backward moment that holds the
    most: a unit running backward with the unit before it (in forward order) prefetched. Without
    ``reshard`` every unit up to it is still unsharded from the forward pass, and none is gathered."""
    best = (0.0, 0.0, 0.0)
    units = layout.units
    for k in range(len(units)):
        prefetched = units[k - 1] if k > 0 else 0.0
        if not reshard:
            prefetched = sum(units[: k - 1]) + prefetched if k > 0 else 0.0
        grads = layout.unit_lora[k] * (weight_bytes + 4.0)  # compute-dtype gradients and their fp32 copy
        candidate = (layout.root + units[k] + prefetched, backward_acts[k], grads)
        if sum(candidate) > sum(best):
            best = candidate
    return best


# (gathered, activations) of the forward's peak; (gathered, activations, unsharded gradients) of backward's.
Moments = tuple[tuple[float, float], tuple[float, float, float]]


def fsdp_moments(
    layout: FsdpLayout, profile: tuple[list[float], list[float]], weight_bytes: int, reshard: bool
) -> Moments:
    """The forward and backward moments of one FSDP rank that hold the most (see gathered_forward and
    gathered_backward); they depend on the layout and the activations only, not on the optimizer."""
    return (
        gathered_forward(layout, profile[0], reshard),
        gathered_backward(layout, profile[1], weight_bytes, reshard),
    )


def fsdp_training(
    layout: FsdpLayout,
    moments: Moments,
    n_lora: int,
    optim: float,
    step: float,
    accumulating: bool,
    encode: float,
    te_train: float,
    vae_train: float,
    offload: bool,
) -> dict[str, float]:
    """The training phase of one FSDP rank (bytes by component): the largest of the forward's gathering,
    backward, and the optimizer step, over this rank's shards."""
    share = layout.sharded_lora / max(n_lora, 1)  # this rank's part of the LoRA (and of its state)
    if offload:  # shards, gradients and optimizer state in host RAM; the optimizer steps there
        share, layout = 0.0, dataclasses.replace(layout, sharded_weights=0.0, sharded_lora=0)
    grads = 4.0 * layout.sharded_lora
    static = dict(
        weights=layout.sharded_weights,
        lora=4.0 * layout.sharded_lora,
        optimizer=optim * share,
        text_encoder=te_train,
        vae=vae_train,
    )
    (g_fwd, a_fwd), (g_bwd, a_bwd, unsharded) = moments
    forward = dict(
        **static, gradients=grads if accumulating else 0.0, activations=max(a_fwd, encode), gathered=g_fwd
    )
    backward = dict(**static, gradients=grads + unsharded, activations=a_bwd, gathered=g_bwd)
    optimizer_step = dict(
        **{**static, "optimizer": (optim + step) * share}, gradients=grads, activations=0.0, gathered=0.0
    )
    return max(forward, backward, optimizer_step, key=lambda p: sum(p.values()))
