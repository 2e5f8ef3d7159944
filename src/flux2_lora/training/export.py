"""Writing the trained adapter: diffusers' format, and optionally ComfyUI's FLUX.2 key names.

The diffusers file is written by the pipeline's own ``save_lora_weights`` (keys ``transformer.…`` plus
the PEFT adapter metadata with rank and alpha), so ``load_lora_weights`` reads it back exactly.

ComfyUI names FLUX.2 layers as BFL's original checkpoint does (``diffusion_model.double_blocks.N.
img_attn.qkv``…; the names are the inverse of diffusers' ``convert_flux2_transformer_checkpoint_to_
diffusers``), where q, k and v are one fused layer. A LoRA's separate q/k/v adapters are fused exactly:
A = [A_q; A_k; A_v] and B = blockdiag(B_q, B_k, B_v), so B·A = [B_q·A_q; B_k·A_k; B_v·A_v]. LoKr and
LoHa deltas (W1 ⊗ W2, (B1·A1) ⊙ (B2·A2)) of q, k and v do not stack into one factor pair, so their
q/k/v are written under diffusers' names (``transformer.transformer_blocks.N.attn.to_q``), which
ComfyUI's FLUX key map sends to the matching row slice of the fused qkv weight: exact, no ``diff``.
The alpha/rank scale is folded into one factor, so the file needs no alpha keys (ComfyUI then uses
scale 1). BFL keeps the final modulation's rows as (shift, scale) where diffusers has (scale, shift):
the adapter's output rows are swapped to match (a LoKr whose W1 has an odd row count cannot be, and
is written as its full delta, ``.diff``).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from flux2_lora import runs
from flux2_lora.config import TrainConfig

log = logging.getLogger("flux2_lora")

COMFY_PREFIX = "diffusion_model."
_DOUBLE_SIMPLE = {
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
    "ff.linear_in": "img_mlp.0",
    "ff.linear_out": "img_mlp.2",
    "ff_context.linear_in": "txt_mlp.0",
    "ff_context.linear_out": "txt_mlp.2",
}
_DOUBLE_QKV = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_SINGLE = {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2"}
_OTHER = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_guidance_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_guidance_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
    "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
    "single_stream_modulation.linear": "single_stream_modulation.lin",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
    "proj_out": "final_layer.linear",
}
_SWAPPED = "norm_out.linear"  # diffusers (scale, shift) rows, BFL (shift, scale)
_KEY = re.compile(r"^(?P<mod>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")
_LYCORIS_KEY = re.compile(
    r"^(?P<mod>.+)\.(?P<p>lokr_w1|lokr_w1_a|lokr_w1_b|lokr_w2|lokr_w2_a|lokr_w2_b|lokr_t2"
    r"|hada_w1_a|hada_w1_b|hada_w2_a|hada_w2_b|hada_t1|hada_t2)(?:\.default)?(?:\.weight)?$"
)


def save_diffusers_lora(
    out_dir: Path,
    variant_pipeline: Any,
    state_dict: dict[str, torch.Tensor],
    adapter_metadata: dict[str, Any],
    dtype: torch.dtype,
    file: str = runs.LORA_FILE,
) -> Path:
    """Write ``file`` (pytorch_lora_weights.safetensors) atomically (the pipeline's writer, then a
    rename)."""
    tmp_dir = out_dir / ".lora-tmp"
    final = out_dir / file
    try:
        tmp_dir.mkdir(exist_ok=True)
        variant_pipeline.save_lora_weights(
            str(tmp_dir),
            transformer_lora_layers={k: v.to(dtype) for k, v in state_dict.items()},
            transformer_lora_adapter_metadata=adapter_metadata,
            weight_name=file,
        )
        (tmp_dir / file).replace(final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # a half-written file holds the space a full disk lacks
    return final


def write_final_lora(
    run_dir: Path,
    variant_pipeline: Any,
    state_dict: dict[str, torch.Tensor],
    adapter_metadata: dict[str, Any],
    config: TrainConfig,
    dtype: torch.dtype,
    resumable: Path | None,
    ema: dict[str, torch.Tensor] | None = None,
) -> Path:
    """A finished run's LoRA (and its ComfyUI copy when asked), and its EMA (``ema``: the same keys) in
    the same formats; a failed write (a full disk) is one line naming the checkpoint that holds the
    trained state."""
    from flux2_lora.training.checkpoint import as_os_error

    scale = config.lora.alpha / config.lora.rank
    if config.lora.type == "lokr":
        # the EMA first: folding returns metadata with alpha = r, which would fold nothing into it
        ema = lokr_scale_folded(ema, adapter_metadata)[0] if ema is not None else None
        state_dict, adapter_metadata = lokr_scale_folded(state_dict, adapter_metadata)
        scale = 1.0  # folded into W1 already
    try:
        final = save_diffusers_lora(run_dir, variant_pipeline, state_dict, adapter_metadata, dtype)
        if ema is not None:
            save_diffusers_lora(run_dir, variant_pipeline, ema, adapter_metadata, dtype, runs.EMA_LORA_FILE)
        if config.output.export_comfyui:
            if config.lora.use_dora:
                log.warning("output.export_comfyui: DoRA magnitudes have no ComfyUI FLUX.2 key; skipped")
            else:
                save_comfyui_lora(run_dir, state_dict, scale, dtype)
                if ema is not None:
                    save_comfyui_lora(run_dir, ema, scale, dtype, runs.EMA_COMFYUI_LORA_FILE)
    except Exception as e:  # safetensors reports a failed write as its own error
        error = as_os_error(e)
        if error is None:
            raise
        raise runs.write_error(
            f"the LoRA ({run_dir / runs.LORA_FILE})",
            error,
            f"the trained state is safe in {resumable}: free space, then resume the run "
            "(--resume latest writes the LoRA at once)",
        ) from e
    return final


def lokr_scale_folded(
    state_dict: dict[str, torch.Tensor], adapter_metadata: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A LoKr adapter with its alpha/r scale folded into W1 (ΔW = s·(W1 ⊗ W2) = (s·W1) ⊗ W2) and alpha
    set to r: diffusers' load_lora_adapter (0.42.1) rebuilds a LoKr file's config from the tensor shapes
    with alpha = rank, so a file that relied on its alpha would load at the wrong strength."""
    r = adapter_metadata["r"]
    if adapter_metadata.get("rank_pattern") or adapter_metadata.get("alpha_pattern"):
        raise ValueError("a LoKr adapter with per-layer ranks or alphas cannot have its scale folded")
    scale = adapter_metadata["alpha"] / r
    folded = {k: v * scale if k.endswith((".lokr_w1", ".lokr_w1_a")) else v for k, v in state_dict.items()}
    return folded, {**adapter_metadata, "alpha": r}


def _split(state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """PEFT state dict ({module}.lora_A.weight …) → {module: {"A": …, "B": …}}."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        m = _KEY.match(key.removeprefix("transformer."))
        if m is None:
            raise ValueError(f"unexpected LoRA key {key!r}")
        modules.setdefault(m["mod"], {})[m["ab"]] = value
    return modules


def _bfl_name(name: str) -> str | None:
    """A diffusers FLUX.2 Linear's ComfyUI (BFL) key prefix; None for the double blocks' q/k/v, which
    BFL fuses into one qkv layer."""
    parts = name.split(".")
    if parts[0] == "single_transformer_blocks" and ".".join(parts[2:]) in _SINGLE:
        return f"{COMFY_PREFIX}single_blocks.{parts[1]}.{_SINGLE['.'.join(parts[2:])]}"
    if parts[0] == "transformer_blocks":
        sub = ".".join(parts[2:])
        if sub in _DOUBLE_SIMPLE:
            return f"{COMFY_PREFIX}double_blocks.{parts[1]}.{_DOUBLE_SIMPLE[sub]}"
        if any(sub in members for members in _DOUBLE_QKV.values()):
            return None
    if name in _OTHER:
        return COMFY_PREFIX + _OTHER[name]
    raise ValueError(f"no ComfyUI name for adapter layer {name!r}")


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    return torch.cat(t.chunk(2, dim=0)[::-1], dim=0)


def to_comfyui(state_dict: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """diffusers/PEFT FLUX.2 LoRA → ComfyUI key names, with q/k/v fused exactly and scale folded in."""
    modules = _split(state_dict)
    out: dict[str, torch.Tensor] = {}
    done: set[str] = set()
    for name, ab in modules.items():
        if name in done:
            continue
        base = _bfl_name(name)
        if base is not None:
            b = ab["B"] * scale
            out[f"{base}.lora_A.weight"] = ab["A"]
            out[f"{base}.lora_B.weight"] = _swap_halves(b) if name == _SWAPPED else b
            done.add(name)
            continue
        parts = name.split(".")
        block, sub = parts[1], ".".join(parts[2:])
        prefix = f"transformer_blocks.{block}."
        fused = next(f for f, members in _DOUBLE_QKV.items() if sub in members)
        members = [prefix + m for m in _DOUBLE_QKV[fused]]
        present = [modules.get(m) for m in members]
        ref = next(p for p in present if p is not None)
        rank, in_f = ref["A"].shape
        out_f = ref["B"].shape[0]
        a_parts, b_parts = [], []
        for p in present:  # a projection without an adapter contributes zeros
            a_parts.append(p["A"] if p is not None else torch.zeros(rank, in_f, dtype=ref["A"].dtype))
            b_parts.append(
                p["B"] * scale if p is not None else torch.zeros(out_f, rank, dtype=ref["B"].dtype)
            )
        base = f"{COMFY_PREFIX}double_blocks.{block}.{fused}"
        out[f"{base}.lora_A.weight"] = torch.cat(a_parts, dim=0)
        out[f"{base}.lora_B.weight"] = torch.block_diag(*b_parts)
        done.update(members)
    return {k: v.contiguous() for k, v in out.items()}


def _lokr_delta(p: dict[str, torch.Tensor]) -> torch.Tensor:
    w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
    w2 = p["lokr_w2"] if "lokr_w2" in p else p["lokr_w2_a"] @ p["lokr_w2_b"]
    return torch.kron(w1, w2)


def _lycoris_swapped(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter with its output rows' halves swapped (diffusers' (scale, shift) → BFL's (shift,
    scale)). LoHa: (B1·A1) ⊙ (B2·A2) swaps with B1 and B2's rows. LoKr: row i of W1 ⊗ W2 is (i // n2,
    i % n2), so the halves swap with W1's when W1 has an even row count; otherwise the full delta."""
    if "hada_w1_a" in p:
        return {**p, "hada_w1_a": _swap_halves(p["hada_w1_a"]), "hada_w2_a": _swap_halves(p["hada_w2_a"])}
    w1 = "lokr_w1" if "lokr_w1" in p else "lokr_w1_a"
    if p[w1].shape[0] % 2 == 0:
        return {**p, w1: _swap_halves(p[w1])}
    return {"diff": _swap_halves(_lokr_delta(p))}


def to_comfyui_lycoris(state_dict: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """PEFT LoKr / LoHa state dict → ComfyUI's LyCORIS keys (``{layer}.lokr_w1``, ``.hada_w1_a``…): the
    BFL name where the layer exists there, diffusers' name (a slice of BFL's qkv in ComfyUI's key map)
    for the double blocks' q/k/v; ``scale`` (alpha / r) folded into W1 (LoKr) or the first B (LoHa)."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        m = _LYCORIS_KEY.match(key.removeprefix("transformer."))
        if m is None:
            raise ValueError(f"unexpected LoKr/LoHa key {key!r}")
        modules.setdefault(m["mod"], {})[m["p"]] = value
    out: dict[str, torch.Tensor] = {}
    for name, params in modules.items():
        if any(k in params for k in ("lokr_t2", "hada_t1")):
            raise ValueError(f"{name}: a CP-decomposed (conv) adapter has no Linear export")
        first = next(k for k in ("lokr_w1", "lokr_w1_a", "hada_w1_a") if k in params)
        params = {**params, first: params[first] * scale}
        base = _bfl_name(name)
        if base is None:
            base = f"transformer.{name}"
        elif name == _SWAPPED:
            params = _lycoris_swapped(params)
        for p, t in params.items():
            out[f"{base}.{p}"] = t
    return {k: v.contiguous() for k, v in out.items()}


def save_comfyui_lora(
    out_dir: Path,
    state_dict: dict[str, torch.Tensor],
    scale: float,
    dtype: torch.dtype,
    file: str = runs.COMFYUI_LORA_FILE,
) -> Path:
    """The ComfyUI copy of a LoRA, LoKr or LoHa state dict (the kind read off its keys)."""
    lycoris = any(_LYCORIS_KEY.match(k.removeprefix("transformer.")) for k in state_dict)
    converted = to_comfyui_lycoris(state_dict, scale) if lycoris else to_comfyui(state_dict, scale)
    final = out_dir / file
    tmp = out_dir / f".{file}.tmp"
    try:
        save_file({k: v.to(dtype) for k, v in converted.items()}, str(tmp), metadata={"format": "pt"})
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)
    return final
