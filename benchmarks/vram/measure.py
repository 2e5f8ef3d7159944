"""One measured run: build the transformer at full size with random weights, quantize it and add the
LoRA as the trainer does, then run real training steps and record the memory peaks.

Device-agnostic: on CUDA the peaks are ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``
and the process's memory as NVML (nvidia-smi) reports it; on CPU (the harness's dry mode) a storage
tracker gives the tensor peak of the same code path.
"""

from __future__ import annotations

import os
import time
from typing import Any

from flux2_lora.memory.gpus import nvidia_smi
from flux2_lora.units import GIB


def gpu_used_mib() -> float | None:
    """Memory used on GPU 0 by every process, as nvidia-smi reports it."""
    rows = nvidia_smi("gpu=memory.used", timeout=10)
    try:
        return float(rows[0][0]) if rows else None
    except ValueError:
        return None


def process_mib() -> float | None:
    """This process's GPU memory as nvidia-smi reports it, or None where its pid is not visible
    (a container's own pid namespace): callers then use the device total minus a baseline."""
    for row in nvidia_smi("compute-apps=pid,used_memory", timeout=10):
        if len(row) == 2 and row[0] == str(os.getpid()):
            try:
                return float(row[1])
            except ValueError:
                return None
    return None


class NvmlMeter:
    """What nvidia-smi shows for this process: its own entry, else the device total above a baseline
    taken before this process created its CUDA context."""

    def __init__(self) -> None:
        self.baseline = gpu_used_mib() or 0.0
        self.source = "process"

    def now_mib(self) -> float:
        own = process_mib()
        if own is not None:
            return own
        self.source = "device total minus baseline"
        return max(0.0, (gpu_used_mib() or 0.0) - self.baseline)


def build_model(arch: Any, dtype: Any, quantization: str, device: Any) -> Any:
    """The transformer with random weights on ``device``, its quantized layers as the trainer has them.

    Built on the meta device and materialized tensor by tensor, so that neither a full-precision copy
    nor a CPU copy of a 32B model is ever needed; NF4 layers are quantized one at a time (bitsandbytes
    Linear4bit with double quantization, the layout diffusers' loader gives on CUDA), int8 by the
    trainer's own torchao call after the bf16 weights are in place."""
    import torch
    from diffusers import Flux2Transformer2DModel

    from flux2_lora.targets import is_quantized_linear
    from flux2_lora.training.model import _quantize_int8, nf4_linear

    with torch.device("meta"):
        model = Flux2Transformer2DModel(**arch.diffusers_config()).to(dtype)
    model.requires_grad_(False)
    if quantization == "nf4":
        import bitsandbytes as bnb

        for name, module in list(model.named_modules()):
            if not isinstance(module, torch.nn.Linear) or not is_quantized_linear(name):
                continue
            with torch.device("meta"):
                q = nf4_linear(module.in_features, module.out_features, module.bias is not None, dtype)
            weight = torch.empty(module.out_features, module.in_features, dtype=dtype, device=device).normal_(
                0, 0.02
            )
            q.weight = bnb.nn.Params4bit(
                weight, requires_grad=False, quant_type="nf4", compress_statistics=True
            )
            if module.bias is not None:
                q.bias = torch.nn.Parameter(
                    torch.zeros(module.out_features, dtype=dtype, device=device), requires_grad=False
                )
            q = q.to(device)  # Params4bit quantizes when moved
            del weight
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, q)
    for module in model.modules():
        for key, p in list(module._parameters.items()):
            if p is not None and p.is_meta:
                module._parameters[key] = torch.nn.Parameter(
                    torch.empty(p.shape, dtype=p.dtype, device=device).normal_(0, 0.02), requires_grad=False
                )
        for key, b in list(module._buffers.items()):
            if b is not None and b.is_meta:
                module._buffers[key] = torch.zeros(b.shape, dtype=b.dtype, device=device)
    if quantization == "int8":
        _quantize_int8(model)
    return model


def run_steps(
    config: Any, arch: Any, device_type: str, *, steps: int = 3, tracker: Any = None
) -> dict[str, Any]:
    """Build, add the LoRA, run ``steps`` training steps; returns the measured peaks (GiB)."""
    import torch

    from flux2_lora.memory.estimate import resolve_shapes
    from flux2_lora.training.flow import flow_matching_loss
    from flux2_lora.training.model import inject_lora
    from flux2_lora.training.optim import build_optimizer

    cuda = device_type == "cuda"
    device = torch.device(device_type)
    sh = resolve_shapes(config)
    dtype = torch.float32 if sh.weight_bytes == 4 else torch.bfloat16
    out: dict[str, Any] = {}
    if cuda:
        nvml = NvmlMeter()
        torch.ones(8, 8, device=device) @ torch.ones(8, 8, device=device)  # CUDA context + cuBLAS handle
        torch.cuda.synchronize()
        out["context_gib"] = (nvml.now_mib() - torch.cuda.memory_reserved() / 2**20) / 1024
    t0 = time.perf_counter()
    quant, swapped = config.memory.quantization, config.memory.blocks_to_swap
    # fp8 and block swap start from host memory, as the trainer's loader has them: fp8 quantizes on the
    # CPU, and the swapped blocks never live on the GPU.
    host_first = cuda and (quant == "fp8" or swapped > 0)
    model = build_model(arch, dtype, "none" if quant == "fp8" else quant, "cpu" if host_first else device)
    if quant == "fp8":
        from flux2_lora.training.fp8 import quantize_fp8

        quantize_fp8(model, dtype)
    torch.manual_seed(0)
    inject_lora(model, config.lora, arch)  # PEFT places the adapter beside each base layer
    if config.memory.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    swap = None
    if swapped:
        from flux2_lora.training.block_swap import install_block_swap

        swap = install_block_swap(model, swapped, device)  # the rest (adapter included) to the device
    elif host_first:
        model.to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(config.training, params)
    out["load_seconds"] = time.perf_counter() - t0
    if cuda:
        # Peaks of training only: loading (and quantizing) peaks are not what the estimate describes.
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    elif tracker is not None:
        for t in [*model.parameters(), *model.buffers()]:
            tracker.track(t)
        tracker.peak = tracker.current
    b, t = config.training.batch_size, config.training
    nvml_peak = 0.0
    step_times = []
    for _ in range(steps):
        s0 = time.perf_counter()
        lat = torch.randn(b, sh.image_tokens, arch.in_channels, device=device, dtype=dtype)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = flow_matching_loss(
                model,
                latents=lat,
                latent_ids=torch.zeros(b, sh.image_tokens, 4, dtype=torch.long, device=device),
                prompt_embeds=torch.randn(
                    b, sh.text_tokens, arch.joint_attention_dim, device=device, dtype=dtype
                ),
                text_ids=torch.zeros(b, sh.text_tokens, 4, dtype=torch.long, device=device),
                sigmas=torch.rand(b, device=device),
                noise=torch.randn_like(lat),
                guidance=torch.full((b,), t.guidance_scale, device=device) if arch.guidance_embeds else None,
            )
        loss.backward()
        if t.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del loss, lat
        if cuda:
            torch.cuda.synchronize()
            # The caching allocator keeps what it reserved, so after a step NVML shows the step's peak.
            nvml_peak = max(nvml_peak, nvml.now_mib())
        step_times.append(time.perf_counter() - s0)
    out["step_seconds"] = step_times
    if swap is not None:
        out["swap_host_gib"] = swap.host_bytes / GIB
    if cuda:
        stats = torch.cuda.memory_stats()
        out.update(
            allocated_gib=torch.cuda.max_memory_allocated() / GIB,
            reserved_gib=torch.cuda.max_memory_reserved() / GIB,
            nvml_gib=nvml_peak / 1024,
            nvml_source=nvml.source,
            num_alloc_retries=stats.get("num_alloc_retries", 0),
            num_ooms=stats.get("num_ooms", 0),
        )
    elif tracker is not None:
        out["allocated_gib"] = tracker.peak / GIB
    return out
