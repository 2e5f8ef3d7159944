"""Trace mode: run the trainer's own training step on fake tensors at full size and report the tensor peak.

Nothing is allocated: ``FakeTensorMode`` gives every tensor a shape and dtype but no data, and a
dispatch-mode tracker adds up live storages (weakref finalizers drop them when they die), which is
what the CUDA caching allocator's ``max_memory_allocated`` counts. Runs on CPU.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only

from ..config import TrainConfig
from ..targets import is_quantized_linear
from ..variants import TransformerArch
from .estimate import resolve_shapes


class StorageTracker(TorchDispatchMode):
    """Sum of live tensor storages, and its peak, from the ops that run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, Any] = {}
        self.current = 0
        self.peak = 0

    def track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key = st._cdata
        if key in self.live:
            return
        n = st.nbytes()
        self.current += n
        self.peak = max(self.peak, self.current)

        def release(k: int = key, n: int = n) -> None:
            if self.live.pop(k, None) is not None:
                self.current -= n

        self.live[key] = weakref.finalize(st, release)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        tree_map_only(torch.Tensor, self.track, out)
        return out


def _flash_sdpa(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):  # type: ignore[no-untyped-def]
    """SDPA as a flash kernel saves it (q, k, v, out, logsumexp): what CUDA training uses. On meta
    tensors the stock dispatcher would take the math path and store the full attention matrix."""
    if attn_mask is not None:
        return _ORIGINAL_SDPA(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
        )
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, dropout_p, is_causal, scale=scale
    )[0]


_ORIGINAL_SDPA = torch.nn.functional.scaled_dot_product_attention


def _quantized_bytes_stub(model: torch.nn.Module, quantization: str) -> int:
    """bitsandbytes / torchao kernels do not run on fake tensors: count their storage instead.

    Returns bytes to add; the traced weights of quantized layers are then freed by the caller."""
    per_weight = {"int8": 1.0, "nf4": 0.5 + 1 / 64 + 4 / (64 * 256)}[quantization]
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and is_quantized_linear(name):
            total += int(m.weight.numel() * per_weight) + (
                m.out_features * 2 if quantization == "int8" else 0
            )
    return total


def trace_training_step(
    config: TrainConfig,
    arch: TransformerArch | None = None,
    text_tokens: int | None = None,
) -> dict[str, float]:
    """Tensor peak (GiB) of one training step (forward, backward, optimizer step) on fake CPU tensors.

    ``arch`` may be a reduced-depth copy of the real one (identical blocks compose linearly)."""
    from diffusers import Flux2Transformer2DModel

    from ..flow import flow_matching_loss
    from ..model import inject_lora
    from ..optim import build_optimizer

    shapes = resolve_shapes(config)
    arch = arch or shapes.arch
    dtype = torch.float32 if shapes.weight_bytes == 4 else torch.bfloat16
    batch = config.training.batch_size
    img_tokens = shapes.image_tokens
    txt = text_tokens or shapes.text_tokens
    tracker = StorageTracker()
    # Meta tensors: shapes and dtypes without data, which PEFT and module.to() handle (fake ones are not swappable).
    with torch.device("meta"):
        model = Flux2Transformer2DModel(**arch.diffusers_config()).to(dtype)
        model.requires_grad_(False)
        extra = 0
        if config.memory.quantization != "none":
            extra = _quantized_bytes_stub(model, config.memory.quantization)
        inject_lora(model, config.lora, arch)
        if config.memory.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
    quantized = set()
    if config.memory.quantization != "none":
        # Quantized kernels do not run on meta tensors: the dense meta weights stand in for the
        # computation, their storage is replaced by the quantized size (``extra``), and the one layer that
        # is dequantized at a time during its matmul is added as a transient.
        for name, m in model.named_modules():
            if (
                isinstance(m, torch.nn.Linear)
                and "lora_" not in name
                and is_quantized_linear(name.replace(".base_layer", ""))
            ):
                quantized.add(m.weight.untyped_storage()._cdata)
        extra += max(
            m.weight.numel() * m.weight.element_size()
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and "lora_" not in name
        )
    with torch.device("meta"), tracker:
        for t in [*model.parameters(), *model.buffers()]:
            if t.untyped_storage()._cdata not in quantized:
                tracker.track(t)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = (
            build_optimizer(config.training, params)
            if config.training.optimizer not in _STEP_NEEDS_VALUES
            else None
        )
        kept_state: list[torch.Tensor] = []  # emulated optimizer state, alive across steps
        lat = torch.randn(batch, img_tokens, arch.in_channels, dtype=dtype)
        ids = torch.zeros(batch, img_tokens, 4, dtype=torch.long)
        emb = torch.randn(batch, txt, arch.joint_attention_dim, dtype=dtype)
        tids = torch.zeros(batch, txt, 4, dtype=torch.long)
        guidance = torch.full((batch,), 1.0) if arch.guidance_embeds else None
        base_peak = tracker.current
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
        torch.nn.functional.scaled_dot_product_attention = _flash_sdpa
        try:
            # Two steps: from the second on, the optimizer state lives through forward and backward.
            for _ in range(2):
                with autocast:
                    loss = flow_matching_loss(
                        model,
                        latents=lat,
                        latent_ids=ids,
                        prompt_embeds=emb,
                        text_ids=tids,
                        sigmas=torch.rand(batch),
                        noise=torch.randn_like(lat),
                        guidance=guidance,
                    )
                after_forward = tracker.current
                loss.backward()
                if config.training.optimizer in _STEP_NEEDS_VALUES:
                    kept_state[:] = _emulated_state(config, params)
                else:
                    optimizer.step()  # type: ignore[union-attr]
                for p in params:
                    p.grad = None
                del loss
        finally:
            torch.nn.functional.scaled_dot_product_attention = _ORIGINAL_SDPA
        weights_now = tracker.current
        peak = tracker.peak + extra
    gib = 2**30
    return {
        "peak_gib": peak / gib,
        "static_gib": (base_peak + extra) / gib,
        "end_gib": (weights_now + extra) / gib,
        "kept_after_forward_gib": (after_forward - base_peak) / gib,
    }


# These optimizers read tensor values (.item()) in step(), which meta tensors do not have: allocate the
# state they keep with their layout instead.
_STEP_NEEDS_VALUES = ("adafactor", "prodigy", "adamw8bit")


def _emulated_state(config: TrainConfig, params: list[torch.Tensor]) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for p in params:
        if config.training.optimizer == "prodigy":
            out += [torch.empty_like(p, dtype=torch.float32) for _ in range(4)]
        elif config.training.optimizer == "adamw8bit":
            out += [torch.empty_like(p, dtype=torch.uint8) for _ in range(2)]
        elif p.dim() == 2:
            out += [
                torch.empty(p.shape[0], dtype=torch.float32),
                torch.empty(p.shape[1], dtype=torch.float32),
            ]
        else:
            out.append(torch.empty_like(p, dtype=torch.float32))
    return out


def reduced(arch: TransformerArch, double: int, single: int) -> TransformerArch:
    return dataclasses.replace(arch, num_layers=double, num_single_layers=single)
