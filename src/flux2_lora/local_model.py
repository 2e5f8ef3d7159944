"""Reading a local model folder's own description, bounded and checked (no torch).

A folder's ``config.json`` files and safetensors headers are input like any other: a wrong type, a
billion layers or a header that claims terabytes must end in one clear :class:`ModelConfigError` naming
the file and the key, in milliseconds, before anything is sized, built or loaded. The bounds are far
above every FLUX.2 model (the largest, [dev], has 8 + 48 blocks of 48 heads × 128).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few kilobytes
MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors format's own limit

# key: (minimum, maximum) of an architecture number of diffusers' Flux2Transformer2DModel config.
TRANSFORMER_INTS: dict[str, tuple[int, int]] = {
    "num_layers": (0, 256),
    "num_single_layers": (0, 256),
    "num_attention_heads": (1, 512),
    "attention_head_dim": (2, 1024),
    "joint_attention_dim": (1, 65536),
    "in_channels": (1, 4096),
    "patch_size": (1, 16),
    "timestep_guidance_channels": (2, 8192),
}
MAX_INNER_DIM = 65536  # heads × head dim
MAX_MLP_RATIO = 16.0
MAX_ROPE_THETA = 1e7
ROPE_AXES = 4  # FLUX.2 positions are (T, H, W, L)
FLUX2_TRANSFORMER_CLASS = "Flux2Transformer2DModel"

# The text encoder's numbers (Qwen3 for [klein], Mistral 3's language model for [dev]).
TEXT_ENCODER_INTS: dict[str, tuple[int, int]] = {
    "num_hidden_layers": (1, 512),
    "hidden_size": (1, 65536),
    "intermediate_size": (1, 1 << 20),
    "num_attention_heads": (1, 1024),
    "num_key_value_heads": (1, 1024),
    "head_dim": (1, 4096),
    "vocab_size": (1, 10_000_000),
    "max_position_embeddings": (1, 1 << 24),
}


class ModelConfigError(ValueError):
    """A local model folder whose description cannot be a FLUX.2 model; names the file and the key."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "…"


def read_config_json(file: Path) -> dict[str, Any]:
    """A config.json as a dict, or ModelConfigError (too large, not JSON, not an object)."""
    try:
        if not file.is_file():
            raise ModelConfigError(f"{file}: not a regular file")
        size = file.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ModelConfigError(f"{file}: {size} bytes is far more than a config.json holds")
        data = json.loads(file.read_bytes())
    except ModelConfigError:
        raise
    except (OSError, ValueError, RecursionError) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ModelConfigError(f"{file}: not readable JSON ({reason})") from None
    if not isinstance(data, dict):
        raise ModelConfigError(f"{file}: holds a JSON {type(data).__name__}, not an object")
    return data


def _int(cfg: dict[str, Any], key: str, limits: tuple[int, int], where: str) -> int:
    value = cfg[key]
    lo, hi = limits
    # JSON has no int type of its own: 8.0 is accepted as 8, true is not a number.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelConfigError(f"{where}: {key} must be a whole number (got {_show(value)})")
    if not lo <= value <= hi:
        raise ModelConfigError(f"{where}: {key} must be between {lo} and {hi} (got {_show(value)})")
    return value


def _number(cfg: dict[str, Any], key: str, hi: float, where: str) -> float:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= hi:
        raise ModelConfigError(
            f"{where}: {key} must be a number above 0 and at most {hi:g} (got {_show(value)})"
        )
    return value


def check_transformer_config(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """The architecture keys of a Flux2Transformer2DModel config, type- and range-checked.

    Returns only the keys present (the caller fills in defaults); unknown keys are ignored, as
    diffusers itself does with the ``_class_name``/``_diffusers_version`` bookkeeping."""
    cls = cfg.get("_class_name")
    if cls is not None and cls != FLUX2_TRANSFORMER_CLASS:
        raise ModelConfigError(
            f"{where}: is a {_show(cls)}, not a FLUX.2 transformer ({FLUX2_TRANSFORMER_CLASS})"
        )
    out: dict[str, Any] = {}
    for key, limits in TRANSFORMER_INTS.items():
        if key in cfg:
            out[key] = _int(cfg, key, limits, where)
    if "out_channels" in cfg and cfg["out_channels"] is not None:
        out["out_channels"] = _int(cfg, "out_channels", (1, 4096), where)
    if "mlp_ratio" in cfg:
        out["mlp_ratio"] = float(_number(cfg, "mlp_ratio", MAX_MLP_RATIO, where))
    if "rope_theta" in cfg:
        out["rope_theta"] = _number(cfg, "rope_theta", MAX_ROPE_THETA, where)
    if "guidance_embeds" in cfg:
        if not isinstance(cfg["guidance_embeds"], bool):
            raise ModelConfigError(
                f"{where}: guidance_embeds must be true or false (got {_show(cfg['guidance_embeds'])})"
            )
        out["guidance_embeds"] = cfg["guidance_embeds"]
    if "axes_dims_rope" in cfg:
        axes = cfg["axes_dims_rope"]
        if (
            not isinstance(axes, list)
            or len(axes) != ROPE_AXES
            or any(isinstance(a, bool) or not isinstance(a, int) or not 2 <= a <= 1024 or a % 2 for a in axes)
        ):
            raise ModelConfigError(
                f"{where}: axes_dims_rope must be {ROPE_AXES} even whole numbers (got {_show(axes)})"
            )
        out["axes_dims_rope"] = tuple(axes)
    return out


def check_transformer_shape(
    heads: int, head_dim: int, axes: tuple[int, ...], blocks: int, where: str
) -> None:
    """Rules across keys, checked once the defaults are filled in."""
    if heads * head_dim > MAX_INNER_DIM:
        raise ModelConfigError(
            f"{where}: num_attention_heads × attention_head_dim = {heads * head_dim} is above {MAX_INNER_DIM}"
        )
    if sum(axes) != head_dim:
        raise ModelConfigError(
            f"{where}: axes_dims_rope {list(axes)} must add up to attention_head_dim ({head_dim})"
        )
    if blocks < 1:
        raise ModelConfigError(f"{where}: num_layers + num_single_layers must be at least 1")


def check_text_encoder_config(cfg: dict[str, Any], where: str) -> dict[str, int]:
    """The text encoder's size numbers (Mistral 3 keeps its language model's under ``text_config``)."""
    text = cfg.get("text_config", cfg)
    if not isinstance(text, dict):
        raise ModelConfigError(f"{where}: text_config must be an object (got {_show(text)})")
    for key in ("num_hidden_layers", "hidden_size"):
        if key not in text:
            raise ModelConfigError(f"{where}: no {key}; not a text encoder config")
    return {key: _int(text, key, limits, where) for key, limits in TEXT_ENCODER_INTS.items() if key in text}


def check_vae_config(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """The VAE's latent channels and block widths (its downsampling is 2^(blocks − 1))."""
    out: dict[str, Any] = {}
    if "latent_channels" in cfg:
        out["latent_channels"] = _int(cfg, "latent_channels", (1, 1024), where)
    if "block_out_channels" in cfg:
        blocks = cfg["block_out_channels"]
        if (
            not isinstance(blocks, list)
            or not 1 <= len(blocks) <= 8
            or any(isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 4096 for b in blocks)
        ):
            raise ModelConfigError(
                f"{where}: block_out_channels must be 1 to 8 whole numbers up to 4096 (got {_show(blocks)})"
            )
        out["block_out_channels"] = tuple(blocks)
    return out


def safetensors_params(folder: Path) -> int | None:
    """Parameters in a folder's safetensors files, from their headers (no weights read); None when the
    folder has none or a header is damaged (the estimate then uses the variant's table)."""
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    total = 0
    for f in files:
        try:
            with f.open("rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if not 0 < size <= MAX_SAFETENSORS_HEADER:
                    return None
                header = json.loads(fh.read(size))
            if not isinstance(header, dict):
                return None
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                shape = info.get("shape") if isinstance(info, dict) else None
                if not isinstance(shape, list) or not all(
                    isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
                ):
                    return None
                n = 1
                for dim in shape:
                    n *= dim
                total += n
        except (OSError, ValueError, RecursionError):
            return None
    return total


def choose_text_encoder_layers(
    default: Sequence[int], depth: int, count: int | None, requested: Sequence[int] = ()
) -> tuple[int, ...]:
    """The encoder's hidden states stacked into a prompt embedding (diffusers' ``text_encoder_out_layers``).

    ``depth``: the encoder's layers (hidden state 0 is the embedding output, N the last layer's);
    ``count``: how many the transformer takes (its joint_attention_dim / the encoder's hidden_size),
    None if unknown. Without ``requested``: the pipeline's ``default`` when the encoder has those
    layers, else ``count`` layers spread evenly over its depth (for 36 layers that is 9, 18, 27)."""
    n = count or len(default)
    if requested:
        missing = [k for k in requested if not 0 <= k <= depth]
        if missing:
            raise ValueError(
                f"model.text_encoder_layers: {', '.join(map(str, missing))} not in the text encoder, which has "
                f"{depth} layers (hidden states 0–{depth})"
            )
        if count is not None and len(requested) != count:
            raise ValueError(
                f"model.text_encoder_layers: {len(requested)} layer(s) given, but the transformer takes {count} "
                "(its joint_attention_dim / the text encoder's hidden_size)"
            )
        return tuple(requested)
    if len(default) == n and max(default) <= depth:
        return tuple(default)
    return tuple(min(depth, max(1, math.ceil(depth * (i + 1) / (n + 1)))) for i in range(n))
