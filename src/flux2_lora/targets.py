"""LoRA target modules of the FLUX.2 transformer, derived from its config (no torch).

The transformer's Linear layers are enumerated here from a :class:`TransformerArch`, with their exact
shapes; a test checks the list against diffusers' real module tree. Named sets and explicit names
resolve to exact module names, so PEFT never relies on suffix matching: in double-stream blocks
``attn.to_out`` is a ModuleList (``to_out.0`` is the Linear), in single-stream blocks it is the Linear.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import NamedTuple

from flux2_lora.variants import TransformerArch


class LinearSpec(NamedTuple):
    """One nn.Linear (a named tuple: a model has hundreds, and a frozen dataclass costs ~1 µs each to
    build, which was a third of a first estimate)."""

    name: str
    in_features: int
    out_features: int
    block: str  # "double", "single" or "other"
    # The block's place in execution order (double blocks, then single; -1 outside the blocks) and the
    # name inside the block ("attn.to_q"): what the memory model groups by, without parsing names.
    order: int = -1
    suffix: str = ""

    @property
    def weight_numel(self) -> int:
        return self.in_features * self.out_features

    def lora_params(self, rank: int, dora: bool = False) -> int:
        # A: rank×in, B: out×rank; DoRA adds one magnitude per output feature.
        return rank * (self.in_features + self.out_features) + (self.out_features if dora else 0)


DOUBLE_ATTN = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0")
DOUBLE_ATTN_CONTEXT = ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")
DOUBLE_FF = ("ff.linear_in", "ff.linear_out", "ff_context.linear_in", "ff_context.linear_out")
SINGLE = ("attn.to_qkv_mlp_proj", "attn.to_out")

# name -> (double-block suffixes, single-block suffixes, help)
TARGET_SETS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "default": (
        DOUBLE_ATTN,
        SINGLE,
        "diffusers' FLUX.2 script default: double-block to_q/to_k/to_v/to_out.0 plus the single blocks' "
        "fused to_qkv_mlp_proj and to_out",
    ),
    "double-attn": (DOUBLE_ATTN, (), "double-block image attention: to_q, to_k, to_v, to_out.0"),
    "double-attn-context": (
        DOUBLE_ATTN_CONTEXT,
        (),
        "double-block text attention: add_q_proj, add_k_proj, add_v_proj, to_add_out",
    ),
    "double-ff": (DOUBLE_FF, (), "double-block feed-forwards (image and text streams)"),
    "single": ((), SINGLE, "single-block fused projections: attn.to_qkv_mlp_proj and attn.to_out"),
    "all-attention": (
        DOUBLE_ATTN + DOUBLE_ATTN_CONTEXT,
        SINGLE,
        "every attention projection of both block types (single blocks' projections are fused with the MLP)",
    ),
    "all-linear": (
        DOUBLE_ATTN + DOUBLE_ATTN_CONTEXT + DOUBLE_FF,
        SINGLE,
        "every Linear inside the double and single blocks",
    ),
}


def block_linears(
    arch: TransformerArch,
) -> tuple[tuple[tuple[str, int, int], ...], tuple[tuple[str, int, int], ...]]:
    """(name inside the block, in, out) of every Linear of one double-stream and of one single-stream block:
    all blocks of a kind are alike, so what is summed per block is summed once per kind."""
    d = arch.inner_dim
    mlp = arch.mlp_hidden_dim
    double = tuple((s, d, d) for s in DOUBLE_ATTN + DOUBLE_ATTN_CONTEXT) + tuple(
        t
        for ff in ("ff", "ff_context")
        for t in ((ff + ".linear_in", d, 2 * mlp), (ff + ".linear_out", mlp, d))
    )
    single = (("attn.to_qkv_mlp_proj", d, 3 * d + 2 * mlp), ("attn.to_out", d + mlp, d))
    return double, single


def enumerate_linears(arch: TransformerArch) -> list[LinearSpec]:
    """Every nn.Linear of ``Flux2Transformer2DModel`` for this config, in module order."""
    d = arch.inner_dim
    out_ch = arch.out_channels or arch.in_channels
    tgc = arch.timestep_guidance_channels
    embed = [
        ("time_guidance_embed.timestep_embedder.linear_1", tgc, d),
        ("time_guidance_embed.timestep_embedder.linear_2", d, d),
    ]
    if arch.guidance_embeds:
        embed += [
            ("time_guidance_embed.guidance_embedder.linear_1", tgc, d),
            ("time_guidance_embed.guidance_embedder.linear_2", d, d),
        ]
    embed += [
        ("double_stream_modulation_img.linear", d, 6 * d),
        ("double_stream_modulation_txt.linear", d, 6 * d),
        ("single_stream_modulation.linear", d, 3 * d),
        ("x_embedder", arch.in_channels, d),
        ("context_embedder", arch.joint_attention_dim, d),
    ]
    double, single = block_linears(arch)
    n = arch.num_layers
    out = [LinearSpec(name, i, o, "other") for name, i, o in embed]
    out += [
        LinearSpec(f"transformer_blocks.{b}.{s}", i, o, "double", b, s)
        for b in range(n)
        for s, i, o in double
    ]
    out += [
        LinearSpec(f"single_transformer_blocks.{b}.{s}", i, o, "single", n + b, s)
        for b in range(arch.num_single_layers)
        for s, i, o in single
    ]
    out += [
        LinearSpec("norm_out.linear", d, 2 * d, "other"),
        LinearSpec("proj_out", d, arch.patch_size * arch.patch_size * out_ch, "other"),
    ]
    return out


def _matches_token(spec: LinearSpec, token: str) -> bool:
    if any(ch in token for ch in "*?["):
        return fnmatch.fnmatchcase(spec.name, token)
    return spec.name == token or spec.name.endswith("." + token)


class TargetError(ValueError):
    """A target-module token that names nothing."""


def resolve_targets(
    tokens: Sequence[str], arch: TransformerArch, linears: Sequence[LinearSpec] | None = None
) -> list[LinearSpec]:
    """Resolve named sets and explicit names/globs to the exact Linear layers, in module order.
    ``linears``: :func:`enumerate_linears` of ``arch`` when the caller has it already."""
    if linears is None:
        linears = enumerate_linears(arch)
    sets = [t.strip() for t in tokens if t.strip()]
    if sets and all(t in TARGET_SETS for t in sets):
        # Named sets only: one pass, by each layer's name inside its block.
        inside = {"double": set[str](), "single": set[str](), "other": set[str]()}
        for token in sets:
            double, single, _ = TARGET_SETS[token]
            inside["double"].update(double)
            inside["single"].update(single)
        return [s for s in linears if s.suffix in inside[s.block]]
    chosen: set[str] = set()
    unknown: list[str] = []
    for raw in tokens:
        token = raw.strip()
        if not token:
            continue
        if token in TARGET_SETS:
            double, single, _ = TARGET_SETS[token]
            chosen.update(
                spec.name
                for spec in linears
                if spec.suffix
                in (double if spec.block == "double" else single if spec.block == "single" else ())
            )
            continue
        hits = [s.name for s in linears if _matches_token(s, token)]
        if not hits:
            unknown.append(token)
        chosen.update(hits)
    if unknown:
        raise TargetError(
            f"{', '.join(repr(u) for u in unknown)} match no Linear layer of the FLUX.2 transformer "
            f"(named sets: {', '.join(TARGET_SETS)}; names such as attn.to_q, attn.to_out.0, "
            f"attn.to_qkv_mlp_proj, ff.linear_in, or a glob like 'single_transformer_blocks.*.attn.to_out')"
        )
    if not chosen:
        raise TargetError("no target modules given")
    return [s for s in linears if s.name in chosen]


# Quantization (int8 / nf4) replaces the Linear layers of the transformer's blocks and modulation,
# which hold nearly all weights; the embedders and the output projection stay in the training dtype
# because they are small and sensitive (what ai-toolkit and diffusers' QLoRA examples also keep).
QUANTIZATION_SKIP_PREFIXES = (
    "time_guidance_embed.",
    "x_embedder",
    "context_embedder",
    "norm_out.",
    "proj_out",
)


def is_quantized_linear(name: str) -> bool:
    return not name.startswith(QUANTIZATION_SKIP_PREFIXES)
