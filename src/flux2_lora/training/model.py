"""Loading FLUX.2 pipelines and components, placing them, quantizing, and adding the LoRA.

Real models and the embedded demo take the same path: ``from_pretrained`` of a diffusers folder (the
demo is built into one first) or a hub id, with the pipeline class of the variant.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from flux2_lora.config import LoraSection, ModelSection
from flux2_lora.targets import QUANTIZATION_SKIP_PREFIXES, is_quantized_linear, resolve_targets
from flux2_lora.variants import TransformerArch, get_variant, is_demo, resolve_model, text_encoder_layers

if TYPE_CHECKING:
    from diffusers import ModelMixin  # Any to mypy (see pyproject), named for the reader


log = logging.getLogger("flux2_lora")


class ModelLoadError(RuntimeError):
    """A model that cannot be found, reached or used; the message names the config field."""


def resolve_model_path(model: ModelSection) -> tuple[str, str, TransformerArch]:
    """(loadable path or hub id, variant, transformer arch); builds the demo on first use."""
    raw = model.path.strip()
    if is_demo(raw):
        from flux2_lora.training.demo_model import ensure_demo_model

        path = str(ensure_demo_model())
        resolved = resolve_model(path, "demo")
        return path, "demo", resolved.arch
    expanded = os.path.expanduser(raw)
    if Path(expanded).exists():
        p = Path(expanded)
        if not p.is_dir() or not (p / "model_index.json").is_file():
            raise ModelLoadError(
                f"model.path: {raw} is not a diffusers pipeline folder (no model_index.json); give the folder "
                "that holds transformer/, vae/, text_encoder/ and tokenizer/"
            )
        raw = expanded
    elif raw.startswith((".", "/", "~")) or raw.count("/") != 1:
        raise ModelLoadError(
            f"model.path: {raw!r} is neither an existing local folder nor a Hugging Face hub id (owner/name)"
        )
    try:
        resolved = resolve_model(raw, model.variant)
        text_encoder_layers(raw, resolved.variant, model.text_encoder_layers)  # fails here, not in caching
    except ValueError as e:
        raise ModelLoadError(str(e)) from None
    return raw, resolved.variant, resolved.arch


def resolve_text_encoder_layers(model: ModelSection, path: str, variant: str) -> tuple[int, ...]:
    """The text-encoder layers prompts are encoded with (model.text_encoder_layers, or automatic)."""
    try:
        return text_encoder_layers(path, variant, model.text_encoder_layers)
    except ValueError as e:
        raise ModelLoadError(str(e)) from None


# What diffusers and huggingface_hub say when a hub model is not cached and the Hub cannot be asked.
_OFFLINE_SIGNS = ("not fully cached locally", "outgoing traffic has been disabled", "offline mode is enabled")
_TRACEBACK_ADVICE = re.compile(r"\s*(Please )?check out the root cause in the stacktrace above\.?", re.I)


def _load_error(path: str, what: str, err: BaseException) -> ModelLoadError:
    text = str(err).strip()
    local = Path(path).exists()
    if not local and any(sign in text.lower() for sign in _OFFLINE_SIGNS):
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        return ModelLoadError(
            f"model.path: {path!r} is not in the local Hugging Face cache and the Hub cannot be reached"
            f"{offline}: download it once while online (hf download {path}), or give a local folder"
        )
    # One line, without advice about a stack trace the console does not show.
    reason = _TRACEBACK_ADVICE.sub("", text.splitlines()[0]).strip() if text else type(err).__name__
    where = "local folder" if local else "hub id (is it reachable, and are you logged in for gated models?)"
    return ModelLoadError(f"model.path: cannot load the {what} from {path!r} as a {where}: {reason}")


def pipeline_class(variant: str) -> Any:
    import diffusers

    return getattr(diffusers, get_variant(variant).pipeline_class)


def load_pipeline_without_transformer(
    path: str,
    variant: str,
    dtype: torch.dtype,
    text_encoder_quantization: str = "none",
    text_encoder_device: torch.device | None = None,
    with_text_encoder: bool = True,
) -> Any:
    """Text encoder, tokenizer, VAE and scheduler: what caching and sampling need besides the transformer.

    A quantized text encoder is loaded first, quantized layer by layer as it is read and placed on
    ``text_encoder_device`` by its loader (never whole in ``dtype`` anywhere), then handed to the pipeline.
    ``with_text_encoder`` False: none is loaded (a process that receives its prompt embeddings)."""
    kwargs: dict[str, Any] = {}
    if not with_text_encoder:
        kwargs["text_encoder"] = None
    elif text_encoder_quantization != "none":
        device = text_encoder_device or torch.device("cpu")
        kwargs["text_encoder"] = load_text_encoder_quantized(
            path, variant, dtype, text_encoder_quantization, device
        )
    try:
        return pipeline_class(variant).from_pretrained(path, transformer=None, dtype=dtype, **kwargs)
    except Exception as e:  # diffusers raises OSError, ValueError or hub errors depending on the cause
        raise _load_error(path, "pipeline", e) from e


def text_encoder_load_kwargs(quantization: str, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """``from_pretrained`` arguments that quantize the text encoder while its files are read: transformers'
    bitsandbytes integration replaces each Linear before its weights load and ``device_map`` places each
    quantized tensor at once, so no full-precision copy of the encoder exists on the GPU or in RAM."""
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise ModelLoadError(
            f"memory.text_encoder_quantization: {quantization} needs bitsandbytes; install "
            "flux2-lora[quantization]"
        ) from None
    if quantization == "nf4":
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    index = device.index if device.type == "cuda" and device.index is not None else device.type
    return {"quantization_config": config, "device_map": {"": index}, "dtype": dtype}


def load_text_encoder_quantized(
    path: str, variant: str, dtype: torch.dtype, quantization: str, device: torch.device
) -> Any:
    import transformers

    try:
        library, name = pipeline_class(variant).load_config(path)["text_encoder"]
        cls = getattr(transformers, name)
        kwargs = text_encoder_load_kwargs(quantization, dtype, device)
        encoder = cls.from_pretrained(path, subfolder="text_encoder", **kwargs)
    except ModelLoadError:
        raise
    except Exception as e:
        raise _load_error(path, f"text encoder ({quantization})", e) from e
    log.info("text encoder loaded in %s on %s", quantization, device)
    return encoder


def is_quantized_module(module: Any) -> bool:
    """A module bitsandbytes placed itself (transformers refuses ``.to()`` on it)."""
    return getattr(module, "hf_quantizer", None) is not None or bool(
        getattr(module, "is_loaded_in_4bit", False)
    )


def load_transformer(path: str, dtype: torch.dtype, quantization: str, device: torch.device) -> ModelMixin:
    from diffusers import Flux2Transformer2DModel

    kwargs: dict[str, Any] = {"dtype": dtype}
    if quantization == "nf4" and device.type == "cuda":
        kwargs["quantization_config"] = _bnb_nf4_config(dtype)
    try:
        transformer = Flux2Transformer2DModel.from_pretrained(path, subfolder="transformer", **kwargs)
    except ModelLoadError:
        raise
    except Exception as e:
        raise _load_error(path, "transformer", e) from e
    transformer.requires_grad_(False)
    if quantization == "fp8":
        from flux2_lora.training.fp8 import quantize_fp8

        quantize_fp8(transformer, dtype)  # on the CPU, where from_pretrained left it
    elif quantization == "int8":
        _quantize_int8(transformer)
    elif quantization == "nf4" and device.type != "cuda":
        _quantize_nf4_manual(transformer, dtype)
    return transformer


def transformer_on_meta(path: str, dtype: torch.dtype) -> ModelMixin:
    """The transformer's modules from its config alone, every tensor on the meta device (no weight is
    read): what FSDP's other processes build while rank 0 loads the weights and broadcasts their shards.
    Frozen and in ``dtype`` like :func:`load_transformer`'s (bf16/fp16/fp32 only: FSDP refuses quantized
    weights)."""
    from diffusers import Flux2Transformer2DModel

    try:
        config = Flux2Transformer2DModel.load_config(path, subfolder="transformer")
    except Exception as e:
        raise _load_error(path, "transformer config", e) from e
    with torch.device("meta"):
        transformer = Flux2Transformer2DModel.from_config(config)
    torch.nn.Module.to(transformer, dtype)  # diffusers' own .to() warns about fp32 modules FLUX.2 has none of
    transformer.requires_grad_(False)
    return transformer


def materialized_bytes(module: torch.nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers that hold memory (meta tensors hold none)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type != "meta")


def _bnb_nf4_config(dtype: torch.dtype) -> Any:
    try:
        import bitsandbytes  # noqa: F401
        from diffusers import BitsAndBytesConfig
    except ImportError:
        raise ModelLoadError(
            "memory.quantization: nf4 needs bitsandbytes; install flux2-lora[quantization]"
        ) from None
    skip = [prefix.rstrip(".") for prefix in QUANTIZATION_SKIP_PREFIXES]  # the same layers as on CPU
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_use_double_quant=True,
        llm_int8_skip_modules=skip,
    )


def _quantize_int8(transformer: torch.nn.Module) -> None:
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise ModelLoadError(
            "memory.quantization: int8 needs torchao; install flux2-lora[quantization]"
        ) from None
    quantize_(
        transformer,
        Int8WeightOnlyConfig(),
        filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and is_quantized_linear(fqn),
    )


def nf4_linear(in_features: int, out_features: int, bias: bool, dtype: torch.dtype) -> torch.nn.Module:
    """An NF4 layer (bitsandbytes Linear4bit, double-quantized absmax): the layout diffusers' loader
    gives on CUDA; its weight is set, and quantized on the move to a device, by the caller."""
    import bitsandbytes as bnb

    return bnb.nn.Linear4bit(
        in_features, out_features, bias=bias, compute_dtype=dtype, quant_type="nf4", compress_statistics=True
    )


def _quantize_nf4_manual(transformer: torch.nn.Module, dtype: torch.dtype) -> None:
    """bitsandbytes NF4 without CUDA: diffusers' loader refuses, but bnb's CPU backend can run the layers."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ModelLoadError(
            "memory.quantization: nf4 needs bitsandbytes; install flux2-lora[quantization]"
        ) from None
    for name, module in list(transformer.named_modules()):
        if not isinstance(module, torch.nn.Linear) or not is_quantized_linear(name):
            continue
        q = nf4_linear(module.in_features, module.out_features, module.bias is not None, dtype)
        q.weight = bnb.nn.Params4bit(
            module.weight.data.cpu(), requires_grad=False, quant_type="nf4", compress_statistics=True
        )
        if module.bias is not None:
            q.bias = torch.nn.Parameter(module.bias.data, requires_grad=False)
        q = q.to("cpu")  # Params4bit quantizes when moved to a device
        parent_name, _, child = name.rpartition(".")
        parent = transformer.get_submodule(parent_name) if parent_name else transformer
        setattr(parent, child, q)


def lora_target_names(lora: LoraSection, arch: TransformerArch) -> list[str]:
    return [s.name for s in resolve_targets(lora.target_modules, arch)]


def adapter_config(lora: LoraSection, arch: TransformerArch) -> Any:
    """PEFT's config for lora.type: LoraConfig, or the LyCORIS-style LoKrConfig / LoHaConfig (a no-op at
    the start like the LoRA: LoKr's W1 and LoHa's second B start at zero)."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    targets = lora_target_names(lora, arch)
    if lora.type == "lokr":
        return LoKrConfig(
            r=lora.rank,
            alpha=lora.alpha,  # type: ignore[arg-type]  # typed int by PEFT; scaling = alpha / r
            decompose_factor=lora.lokr_factor or -1,
            decompose_both=lora.lokr_decompose_both,
            target_modules=targets,
        )
    if lora.type == "loha":
        return LoHaConfig(r=lora.rank, alpha=lora.alpha, target_modules=targets)  # type: ignore[arg-type]
    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # typed int by PEFT; scaling = alpha / r takes a float
        lora_dropout=lora.dropout,
        use_dora=lora.use_dora,
        init_lora_weights="gaussian",
        target_modules=targets,
    )


def inject_lora(transformer: ModelMixin, lora: LoraSection, arch: TransformerArch) -> int:
    """Add the PEFT adapter (lora.type) on the exact target layers; adapter weights in fp32. Returns
    trainable params."""
    transformer.add_adapter(adapter_config(lora, arch))
    trainable = 0
    for p in transformer.parameters():
        if p.requires_grad:
            # fp32 master copy: bf16 LoRA updates lose most of a small learning rate's effect.
            p.data = p.data.float()
            trainable += p.numel()
    return trainable


def free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
