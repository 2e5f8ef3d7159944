"""Trace mode: run the trainer's own training step on meta tensors at full size and report the tensor peak.

Nothing is allocated: meta tensors have a shape and dtype but no data, and a dispatch-mode tracker adds
up live storages (weakref finalizers drop them when they die), which is what the CUDA caching
allocator's ``max_memory_allocated`` counts. Runs on CPU in seconds even for FLUX.2 [dev]. The text
encoder and the VAE are traced the same way for the caching and sampling phases.
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only

from flux2_lora.config import TrainConfig
from flux2_lora.memory.estimate import BNB_MIN_8BIT_SIZE, NF4_BYTES_PER_WEIGHT, resolve_shapes
from flux2_lora.targets import is_quantized_linear
from flux2_lora.units import GIB
from flux2_lora.variants import TextEncoderArch, TransformerArch, VaeArch


class StorageTracker(TorchDispatchMode):
    """Sum of live tensor storages, and its peak, from the ops that run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, Any] = {}
        self.sizes: dict[int, int] = {}  # bytes of each live storage (FSDP resizes them in place)
        self.current = 0
        self.peak = 0
        # Storages counted elsewhere (quantized weights stood in for by dense meta ones): never counted,
        # not even when a view of them (a transpose in a matmul) comes out of an op.
        self.ignored: set[int] = set()
        self._to_meta = False

    def track(self, t: torch.Tensor) -> None:
        from flux2_lora.training.trace_fsdp import local

        st = local(t).untyped_storage()  # a sharded tensor's storage is its local shard
        key = st._cdata
        if key in self.live or key in self.ignored:
            return
        self.sizes[key] = st.nbytes()
        self._add(self.sizes[key])

        def release(k: int = key) -> None:
            if self.live.pop(k, None) is not None:
                self.current -= self.sizes.pop(k, 0)

        self.live[key] = weakref.finalize(st, release)

    def _add(self, n: int) -> None:
        self.current += n
        self.peak = max(self.peak, self.current)

    @contextlib.contextmanager
    def resizes(self) -> Iterator[None]:
        """Follow in-place storage resizes (FSDP frees and re-allocates unsharded parameters so)."""
        original = torch.UntypedStorage.resize_

        def resize_(st: Any, n: int) -> Any:
            key = st._cdata
            if key in self.live:
                self._add(n - self.sizes[key])
                self.sizes[key] = n
            return original(st, n)

        torch.UntypedStorage.resize_ = resize_  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            torch.UntypedStorage.resize_ = original  # type: ignore[method-assign]

    @contextlib.contextmanager
    def meta_factories(self) -> Iterator[None]:
        """Tensors created on the CPU by name (FSDP allocates its buffers on the mesh's device) are made
        on meta instead, so nothing is allocated and meta tensors never meet CPU ones. Takes effect while
        the tracker is active."""
        self._to_meta = True
        try:
            yield
        finally:
            self._to_meta = False

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if self._to_meta and isinstance(device, torch.device) and device.type == "cpu":
            kwargs = {**kwargs, "device": torch.device("meta")}
        out = func(*args, **kwargs)
        tree_map_only(torch.Tensor, self.track, out)
        return out


_ORIGINAL_SDPA = torch.nn.functional.scaled_dot_product_attention


def _flash_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """SDPA as a flash kernel saves it (q, k, v, out, logsumexp): what CUDA training uses. On meta
    tensors the stock dispatcher would take the math path and store the full attention matrix."""
    if attn_mask is not None:
        return _ORIGINAL_SDPA(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
        )
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        rep = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(rep, dim=-3), value.repeat_interleave(rep, dim=-3)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, dropout_p, is_causal, scale=scale
    )[0]


@contextlib.contextmanager
def _cuda_like_attention() -> Iterator[None]:
    torch.nn.functional.scaled_dot_product_attention = _flash_sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = _ORIGINAL_SDPA


def _quantized_bytes_stub(model: torch.nn.Module, quantization: str) -> int:
    """bitsandbytes / torchao kernels do not run on meta tensors: count their storage instead."""
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and is_quantized_linear(name):
            if quantization == "int8":
                total += m.weight.numel() + m.out_features * 2
            elif quantization == "fp8":  # e4m3 bytes and an fp32 scale per row (training/fp8.py)
                total += m.weight.numel() + m.out_features * 4
            else:
                total += int(m.weight.numel() * NF4_BYTES_PER_WEIGHT)
    return total


def trace_training_step(
    config: TrainConfig,
    arch: TransformerArch | None = None,
    text_tokens: int | None = None,
    num_processes: int | None = None,
) -> dict[str, float]:
    """Tensor peak (GiB) of training steps (forward, backward, optimizer step) on meta tensors, of one
    process: under FSDP (``distributed.strategy`` fsdp over ``num_processes``, default the config's
    process count) rank 0 of them, sharded by torch's fully_shard under a fake process group.

    ``arch`` may be a reduced-depth copy of the real one (identical blocks compose linearly)."""
    n = num_processes or config.distributed.world_size
    if config.distributed.strategy == "fsdp" and n > 1:
        from flux2_lora.training.trace_fsdp import fake_process_group, meta_fsdp

        with fake_process_group(n), meta_fsdp():
            return _trace_step(config, arch, text_tokens, fsdp=True)
    return _trace_step(config, arch, text_tokens, fsdp=False)


def _trace_step(
    config: TrainConfig, arch: TransformerArch | None, text_tokens: int | None, fsdp: bool
) -> dict[str, float]:
    from diffusers import Flux2Transformer2DModel

    from flux2_lora.training.flow import flow_matching_loss
    from flux2_lora.training.model import inject_lora
    from flux2_lora.training.optim import build_optimizer

    shapes = resolve_shapes(config)
    arch = arch or shapes.arch
    dtype = torch.float32 if shapes.weight_bytes == 4 else torch.bfloat16
    batch = config.training.batch_size
    img_tokens = shapes.image_tokens
    txt = text_tokens or shapes.text_tokens
    tracker = StorageTracker()
    # Meta tensors: shapes and dtypes without data, which PEFT and module.to() handle.
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
        # The dense meta weights stand in for the computation, their storage is replaced by the
        # quantized size (``extra``), and the one layer dequantized at a time is added as a transient.
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
    if fsdp:
        from flux2_lora.training.trace_fsdp import shard_on_meta

        shard_on_meta(model, config, dtype)
    with contextlib.ExitStack() as stack:
        for ctx in (torch.device("meta"), tracker, _cuda_like_attention()):
            stack.enter_context(ctx)
        if fsdp:  # FSDP's buffers on meta; its unsharded parameters are freed by resizing their storage
            stack.enter_context(tracker.meta_factories())
            stack.enter_context(tracker.resizes())
        tracker.ignored = quantized
        for t in [*model.parameters(), *model.buffers()]:
            tracker.track(t)
        params = [p for p in model.parameters() if p.requires_grad]
        emulated = config.training.optimizer in _STEP_NEEDS_VALUES
        optimizer = None if emulated else build_optimizer(config.training, params)
        if optimizer is not None:
            # As on CUDA: the trainer asks for the fused Adam/AdamW kernels there (in place, tensor by
            # tensor: the single-tensor loop allocates what they do); the other optimizers default to
            # their foreach implementations (on CPU they do not).
            fused = config.training.optimizer in ("adamw", "adam")
            for group in optimizer.param_groups:
                group["foreach"] = not fused
        kept_state: list[torch.Tensor] = []  # emulated optimizer state, alive across steps
        lat = torch.randn(batch, img_tokens, arch.in_channels, dtype=dtype)
        ids = torch.zeros(batch, img_tokens, 4, dtype=torch.long)
        emb = torch.randn(batch, txt, arch.joint_attention_dim, dtype=dtype)
        tids = torch.zeros(batch, txt, 4, dtype=torch.long)
        guidance = torch.full((batch,), 1.0) if arch.guidance_embeds else None
        base_peak = tracker.current
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
        # Two optimizer steps: from the second on, the optimizer state lives through forward and backward.
        accumulation = config.training.gradient_accumulation_steps
        for micro in range(2 * accumulation):
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
            del loss
            if (micro + 1) % accumulation:
                continue  # gradients accumulate until the last micro-batch of the step
            if config.training.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, config.training.max_grad_norm)  # scalars, in place
            if optimizer is None:  # emulated
                if not kept_state:
                    kept_state[:] = _emulated_state(config, params)
                temporary = _emulated_step_temporary(config, params)
                del temporary
            else:
                optimizer.step()
            for p in params:
                p.grad = None
        weights_now = tracker.current
        peak = tracker.peak + extra
    return {
        "peak_gib": peak / GIB,
        "static_gib": (base_peak + extra) / GIB,
        "end_gib": (weights_now + extra) / GIB,
        "kept_after_forward_gib": (after_forward - base_peak) / GIB,
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
            if p.numel() < BNB_MIN_8BIT_SIZE:  # bitsandbytes keeps small tensors' state in fp32
                out += [torch.empty_like(p, dtype=torch.float32) for _ in range(2)]
            else:
                blocks = -(-p.numel() // 256)
                out += [torch.empty_like(p, dtype=torch.uint8) for _ in range(2)]
                out += [torch.empty(blocks, dtype=torch.float32) for _ in range(2)]
        elif p.dim() == 2 and min(p.shape) > 1:
            out += [
                torch.empty(p.shape[0], dtype=torch.float32),
                torch.empty(p.shape[1], dtype=torch.float32),
            ]
        else:
            out.append(torch.empty_like(p, dtype=torch.float32))
    return out


def _emulated_step_temporary(config: TrainConfig, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """What the emulated optimizers allocate inside one step: Adafactor's foreach variance estimate
    (one fp32 copy of every parameter), Prodigy's per-tensor temporaries (twice the largest tensor),
    nothing for bitsandbytes' in-place 8-bit update."""
    if config.training.optimizer == "adafactor":
        return [torch.empty_like(p, dtype=torch.float32) for p in params]
    if config.training.optimizer == "prodigy":
        largest = max(params, key=lambda p: p.numel())
        return [torch.empty_like(largest, dtype=torch.float32) for _ in range(2)]
    return []


def reduced(arch: TransformerArch, double: int, single: int) -> TransformerArch:
    return dataclasses.replace(arch, num_layers=double, num_single_layers=single)


def _measure(model: torch.nn.Module, run: Any) -> int:
    """Peak bytes above the model's own tensors while ``run()`` executes without gradients."""
    tracker = StorageTracker()
    with torch.device("meta"), tracker, torch.no_grad(), _cuda_like_attention():
        for t in [*model.parameters(), *model.buffers()]:
            tracker.track(t)
        base = tracker.current
        run()
        return tracker.peak - base


def trace_text_encoder(te: TextEncoderArch, dtype: torch.dtype, prompts: int) -> int:
    """Activation peak (bytes) of the pipelines' prompt encoding: ``prompts`` padded prompts through the
    causal LM with every hidden state returned. Mistral3's vision tower takes no part in text encoding,
    so [dev]'s encoder is traced as its language model with the LM head."""
    import transformers.masking_utils as masking
    from transformers import MistralConfig, MistralForCausalLM, Qwen3Config, Qwen3ForCausalLM

    kwargs = te.transformers_config()
    cfg = Qwen3Config(**kwargs) if te.kind == "qwen3" else MistralConfig(**kwargs)
    cfg._attn_implementation = "sdpa"
    with torch.device("meta"):
        # Any: transformers types .to() through a decorator that mypy reads as taking a model.
        model: Any = Qwen3ForCausalLM(cfg) if isinstance(cfg, Qwen3Config) else MistralForCausalLM(cfg)
        model = model.to(dtype).eval()
    # Mask construction inspects values (.item()), which meta tensors lack; without a padding mask the
    # attention is causal and the same size (a real run's mask is one small boolean tensor more).
    original = masking.find_packed_sequence_indices
    masking.find_packed_sequence_indices = lambda *a, **k: None
    try:

        def run() -> None:
            ids = torch.zeros(prompts, te.max_sequence_length, dtype=torch.long)
            out = model(input_ids=ids, attention_mask=None, output_hidden_states=True, use_cache=False)
            torch.stack([out.hidden_states[k] for k in te.out_layers], dim=1)

        return _measure(model, run)
    finally:
        masking.find_packed_sequence_indices = original


def trace_vae(
    vae: VaeArch,
    dtype: torch.dtype,
    resolution: int,
    *,
    batch: int,
    decode: bool,
    slicing: bool = False,
    tiling: bool = False,
) -> int:
    """Activation peak (bytes) of one encode or decode with diffusers' AutoencoderKLFlux2."""
    from diffusers import AutoencoderKLFlux2

    with torch.device("meta"):
        model = AutoencoderKLFlux2(
            block_out_channels=vae.block_out_channels,
            latent_channels=vae.latent_channels,
            sample_size=vae.sample_size,
            norm_num_groups=min(32, *vae.block_out_channels),  # the demo's VAE is narrower than 32 groups
        ).to(dtype)
    if slicing:
        model.enable_slicing()
    if tiling:
        model.enable_tiling()
    cells = resolution // vae.spatial_factor

    def run() -> None:
        if decode:
            model.decode(torch.randn(batch, vae.latent_channels, cells, cells, dtype=dtype))
        else:
            model.encode(torch.randn(batch, 3, resolution, resolution, dtype=dtype)).latent_dist.mode()

    return _measure(model, run)


def trace_sampling_forward(config: TrainConfig, arch: TransformerArch | None = None) -> int:
    """Activation peak (bytes) of one no-grad transformer forward at batch 1 with the live LoRA."""
    from diffusers import Flux2Transformer2DModel

    from flux2_lora.training.model import inject_lora

    shapes = resolve_shapes(config)
    arch = arch or shapes.arch
    dtype = torch.float32 if shapes.weight_bytes == 4 else torch.bfloat16
    with torch.device("meta"):
        model = Flux2Transformer2DModel(**arch.diffusers_config()).to(dtype)
        model.requires_grad_(False)
        inject_lora(model, config.lora, arch)
        model.eval()
    img, txt = shapes.image_tokens, shapes.text_tokens

    def run() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            model(
                hidden_states=torch.randn(1, img, arch.in_channels, dtype=dtype),
                encoder_hidden_states=torch.randn(1, txt, arch.joint_attention_dim, dtype=dtype),
                timestep=torch.ones(1, dtype=dtype),
                img_ids=torch.zeros(1, img, 4, dtype=torch.long),
                txt_ids=torch.zeros(1, txt, 4, dtype=torch.long),
                guidance=torch.ones(1) if arch.guidance_embeds else None,
                return_dict=False,
            )

    return _measure(model, run)


def trace_report(config: TrainConfig) -> dict[str, Any]:
    """Traced figures at full size next to the estimate's: the training step's tensor peak, and the
    activations of the text encoder, the VAE encode/decode and one sampling forward."""
    from flux2_lora.memory.encoders import IMAGE_BATCH, PROMPT_BATCH, text_encoder_activation_bytes, vae_bytes
    from flux2_lora.memory.estimate import _inference, estimate

    shapes = resolve_shapes(config)
    mem = config.memory
    dtype = torch.float32 if shapes.weight_bytes == 4 else torch.bfloat16
    wb, res = shapes.weight_bytes, config.dataset.resolution
    images = 1 if mem.vae_slicing else IMAGE_BATCH
    pairs = {
        "training_peak": (
            trace_training_step(config)["peak_gib"] * GIB,
            estimate(config, kernels="trace").phases["training"] * GIB,
        ),
        "text_encoder_activations": (
            trace_text_encoder(shapes.text_encoder, dtype, PROMPT_BATCH),
            text_encoder_activation_bytes(shapes.text_encoder, wb, PROMPT_BATCH),
        ),
        "vae_encode_activations": (
            trace_vae(shapes.vae, dtype, res, batch=images, decode=False, tiling=mem.vae_tiling),
            vae_bytes(shapes.vae, wb, res, batch=images, decode=False, slicing=False, tiling=mem.vae_tiling),
        ),
        "vae_decode_activations": (
            trace_vae(shapes.vae, dtype, res, batch=1, decode=True, tiling=mem.vae_tiling),
            vae_bytes(shapes.vae, wb, res, batch=1, decode=True, slicing=False, tiling=mem.vae_tiling),
        ),
        "sampling_forward_activations": (
            trace_sampling_forward(config),
            _inference(
                tuple(config.lora.target_modules),
                shapes.arch,
                wb,
                shapes.image_tokens,
                shapes.text_tokens,
                config.lora.use_dora,
            ),
        ),
    }
    return {
        name: {"traced_gib": t / GIB, "estimated_gib": e / GIB, "error": (e - t) / t if t else None}
        for name, (t, e) in pairs.items()
    }
