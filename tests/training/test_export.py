"""LoRA files: diffusers' format loads with load_lora_weights; ComfyUI keys round-trip exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from flux2_lora.config import LoraSection, ModelSection
from flux2_lora.training.export import save_comfyui_lora, save_diffusers_lora, to_comfyui
from flux2_lora.training.model import inject_lora, pipeline_class, resolve_model_path


def _trained_like_state(
    rank: int = 4, targets: list[str] | None = None
) -> tuple[str, str, Any, dict[str, torch.Tensor], LoraSection]:
    from peft.utils import get_peft_model_state_dict

    from flux2_lora.training.model import load_transformer

    path, variant, arch = resolve_model_path(ModelSection())
    tr = load_transformer(path, torch.float32, "none", torch.device("cpu"))
    torch.manual_seed(0)
    lora = LoraSection(rank=rank, alpha=rank * 2, target_modules=targets or ["all-linear"])
    inject_lora(tr, lora, arch)
    for name, p in tr.named_parameters():  # B starts at zero; make the adapter do something
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    return path, variant, tr, get_peft_model_state_dict(tr), lora


def _generate(pipe: Any, seed: int = 0) -> torch.Tensor:
    out = pipe(
        prompt="a red circle on stripes, sks style",
        height=64,
        width=64,
        num_inference_steps=3,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
    )
    return out.images


def test_diffusers_file_has_transformer_keys_and_metadata(tmp_path: Path) -> None:
    path, variant, tr, state, lora = _trained_like_state()
    file = save_diffusers_lora(
        tmp_path, pipeline_class(variant), state, tr.peft_config["default"].to_dict(), torch.float32
    )
    with safe_open(str(file), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    assert keys and all(k.startswith("transformer.") for k in keys)
    assert any(k.endswith("lora_A.weight") for k in keys)
    import json

    adapter_meta = json.loads(meta["lora_adapter_metadata"])
    assert adapter_meta["transformer.r"] == 4 and adapter_meta["transformer.lora_alpha"] == 8


def test_diffusers_and_comfyui_files_load_and_match(tmp_path: Path) -> None:
    path, variant, tr, state, lora = _trained_like_state()
    cls = pipeline_class(variant)
    diff_file = save_diffusers_lora(tmp_path, cls, state, tr.peft_config["default"].to_dict(), torch.float32)
    comfy_file = save_comfyui_lora(tmp_path, state, lora.alpha / lora.rank, torch.float32)
    pipe = cls.from_pretrained(path)
    base = _generate(pipe)
    pipe.load_lora_weights(str(diff_file), adapter_name="d")
    with_diffusers = _generate(pipe)
    pipe.delete_adapters("d")
    pipe.load_lora_weights(str(comfy_file), adapter_name="c")
    with_comfy = _generate(pipe)
    assert (with_diffusers - base).abs().max() > 1e-3  # the LoRA changes the output
    torch.testing.assert_close(with_comfy, with_diffusers, atol=1e-4, rtol=1e-4)


def test_comfyui_names_follow_bfl_layout() -> None:
    *_, state, lora = _trained_like_state(targets=["attn.to_q", "attn.to_qkv_mlp_proj", "ff.linear_in"])
    out = to_comfyui(state, 1.0)
    assert all(k.startswith("diffusion_model.") for k in out)
    assert "diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight" in out
    assert "diffusion_model.single_blocks.1.linear1.lora_B.weight" in out
    assert "diffusion_model.double_blocks.1.img_mlp.0.lora_A.weight" in out
    # to_k / to_v had no adapter: their blocks of the fused B are zero
    b = out["diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight"]
    d = b.shape[0] // 3
    assert b[d:].abs().sum() == 0 and b[:d].abs().sum() > 0
