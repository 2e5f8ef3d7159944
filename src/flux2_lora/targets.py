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


def enumerate_linears(arch: TransformerArch) -> list[LinearSpec]:
    """Every nn.Linear of ``Flux2Transformer2DModel`` for this config, in module order."""
    d = arch.inner_dim
    mlp = arch.mlp_hidden_dim
    out_ch = arch.out_channels or arch.in_channels
    tgc = arch.timestep_guidance_channels
    out: list[LinearSpec] = []

    def add(name: str, i: int, o: int, block: str = "other") -> None:
        out.append(LinearSpec(name, i, o, block))

    add("time_guidance_embed.timestep_embedder.linear_1", tgc, d)
    add("time_guidance_embed.timestep_embedder.linear_2", d, d)
    if arch.guidance_embeds:
        add("time_guidance_embed.guidance_embedder.linear_1", tgc, d)
        add("time_guidance_embed.guidance_embedder.linear_2", d, d)
    add("double_stream_modulation_img.linear", d, 6 * d)
    add("double_stream_modulation_txt.linear", d, 6 * d)
    add("single_stream_modulation.linear", d, 3 * d)
    add("x_embedder", arch.in_channels, d)
    add("context_embedder", arch.joint_attention_dim, d)
    for i in range(arch.num_layers):
        p = f"transformer_blocks.{i}."
        for s in ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"):
            add(p + s, d, d, "double")
        for s in ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"):
            add(p + s, d, d, "double")
        for ff in ("ff", "ff_context"):
            add(p + ff + ".linear_in", d, 2 * mlp, "double")
            add(p + ff + ".linear_out", mlp, d, "double")
    for i in range(arch.num_single_layers):
        p = f"single_transformer_blocks.{i}."
        add(p + "attn.to_qkv_mlp_proj", d, 3 * d + 2 * mlp, "single")
        add(p + "attn.to_out", d + mlp, d, "single")
    add("norm_out.linear", d, 2 * d)
    add("proj_out", d, arch.patch_size * arch.patch_size * out_ch)
    return out


def _block_suffix(spec: LinearSpec) -> str | None:
    if spec.block in ("double", "single"):
        return spec.name.split(".", 2)[2]  # "transformer_blocks.3.attn.to_q" -> "attn.to_q"
    return None


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
    chosen: set[str] = set()
    unknown: list[str] = []
    for raw in tokens:
        token = raw.strip()
        if not token:
            continue
        if token in TARGET_SETS:
            double, single, _ = TARGET_SETS[token]
            for spec in linears:
                suffix = _block_suffix(spec)
                if (spec.block == "double" and suffix in double) or (
                    spec.block == "single" and suffix in single
                ):
                    chosen.add(spec.name)
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
