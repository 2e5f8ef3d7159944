"""GPU memory of the text encoder and the VAE while they encode or decode (pure Python, no torch).

Both run without gradients, so only their weights and the tensors of one forward count. The
per-token and per-pixel figures were read off fake-tensor traces of transformers' Qwen3 / Mistral3
and diffusers' ``AutoencoderKLFlux2`` (with CUDA's memory-efficient attention) and are checked
against new traces in tests/memory.
"""

from __future__ import annotations

import functools

from flux2_lora.variants import TextEncoderArch, VaeArch

# The trainer encodes captions 8 at a time and images 4 at a time while caching (batches.py).
PROMPT_BATCH = 8
IMAGE_BATCH = 4

# Bytes per pixel per weight byte of one encode / decode with the FLUX.2 VAE (128 channels at full
# resolution); other VAEs scale with their first block's width.
_VAE_ENCODE = 640.0
_VAE_DECODE = 768.5


def text_encoder_activation_bytes(te: TextEncoderArch, dtype_bytes: int, prompts: int) -> float:
    """One forward of ``prompts`` prompts padded to max_sequence_length, as the pipelines run it.

    ``output_hidden_states=True`` keeps every layer's hidden state, and the causal-LM head computes
    logits over the whole vocabulary for every token; the peak comes at the logits."""
    per_token = te.vocab_size + (te.num_layers + 4) * te.hidden_size
    # A mid-network peak (all hidden states so far plus the MLP's three intermediates) for encoders
    # with a small vocabulary.
    per_token = max(per_token, (te.num_layers + 1) * te.hidden_size + 3 * te.intermediate_size)
    return float(dtype_bytes * prompts * te.max_sequence_length * per_token)


def vae_bytes(
    vae: VaeArch, dtype_bytes: int, resolution: int, *, batch: int, decode: bool, slicing: bool, tiling: bool
) -> float:
    """Activations of one VAE encode (pixels → latents) or decode at a square resolution.

    Slicing runs a batch one image at a time; tiling runs images above the VAE's sample size in
    tiles of that size (diffusers' tiled encode/decode) plus the assembled output."""
    per_px = (_VAE_DECODE if decode else _VAE_ENCODE) * dtype_bytes * vae.block_out_channels[0] / 128
    images = 1 if slicing else batch
    tiled = tiling and resolution > vae.sample_size
    side = vae.sample_size if tiled else resolution
    out = per_px * images * side * side
    if tiled:
        # The full-size result assembled from the tiles (pixels for decode, latent moments for encode).
        channels = 3 if decode else 2 * vae.latent_channels / vae.spatial_factor**2
        out += dtype_bytes * batch * channels * resolution * resolution
    # The input batch itself (pixels or latents) lives throughout.
    channels_in = vae.latent_channels / vae.spatial_factor**2 if decode else 3
    return out + dtype_bytes * batch * channels_in * resolution * resolution


# bitsandbytes' text-encoder formats (memory.text_encoder_quantization), as transformers loads them:
# LLM.int8 keeps one int8 byte per weight plus one fp32 absmax per output row (SCB); NF4 4 bits per weight
# with double-quantized block-wise absmax (one 8-bit scale per 64 weights, one fp32 per 256 scales), the
# transformer's own NF4 layout. Only the decoder layers' Linears are quantized: transformers keeps the
# embeddings and the LM head (and, counted with them, norms and Mistral3's vision tower) in bf16.
TE_INT8_ROW_BYTES = 4
TE_NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)


@functools.lru_cache(maxsize=64)
def text_encoder_linears(te: TextEncoderArch) -> tuple[int, int]:
    """(weights of the decoder layers' Linears, the largest Linear's weights) from the architecture:
    q, k, v, o and the gated MLP's gate, up and down projections of every layer."""
    q = te.num_attention_heads * te.head_dim
    kv = te.num_key_value_heads * te.head_dim
    h, i = te.hidden_size, te.intermediate_size
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * i
    return te.num_layers * per_layer, max(h * q, q * h, h * i)


@functools.lru_cache(maxsize=256)
def text_encoder_weight_bytes(te: TextEncoderArch, dtype_bytes: int, quantization: str) -> float:
    """The encoder's weights as loaded: all in ``dtype_bytes``, or its decoder Linears in int8 / NF4."""
    linear, _ = text_encoder_linears(te)
    if quantization == "none" or linear <= 0 or linear > te.params:
        return float(te.params * dtype_bytes)
    rest = (te.params - linear) * dtype_bytes
    if quantization == "int8":
        q_layers = te.num_layers * (te.num_attention_heads + 2 * te.num_key_value_heads) * te.head_dim
        rows = q_layers + te.num_layers * (te.hidden_size + 2 * te.intermediate_size + te.hidden_size)
        return float(rest + linear + TE_INT8_ROW_BYTES * rows)
    return rest + linear * TE_NF4_BYTES_PER_WEIGHT


def text_encoder_dequant_bytes(te: TextEncoderArch, dtype_bytes: int, quantization: str) -> float:
    """A quantized encoder's matmul dequantizes one Linear at a time: the largest one's transient."""
    return 0.0 if quantization == "none" else float(text_encoder_linears(te)[1] * dtype_bytes)
