"""The FLUX.2 model variants this toolkit trains, as plain data (no torch).

Everything that needs an architecture fact (memory estimate, LoRA target resolution, model loading,
the embedded demo) reads it from here or from a model folder's own ``config.json`` through
:func:`transformer_arch_from_config`, never from literals scattered in code.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from flux2_lora.local_model import (
    ModelConfigError,
    check_text_encoder_config,
    check_transformer_config,
    check_transformer_shape,
    check_vae_config,
    choose_text_encoder_layers,
    read_config_json,
    safetensors_params,
)

# Every fact keyed by variant name derives from these (the schema's model.variant Literal, the shipped
# preset of each real variant, autotune's choices, the UI's model picker); tests/test_variants.py ties
# them together.
VARIANT_NAMES: tuple[str, ...] = ("dev", "klein-4b", "klein-9b", "demo")
REAL_VARIANTS: tuple[str, ...] = ("dev", "klein-4b", "klein-9b")  # each has a shipped preset of its name
LIGHTEST_REAL_VARIANT = "klein-4b"
DEMO_MODEL_PATH = "demo"


# Block swap (training/block_swap.py) keeps at most this many swapped blocks' frozen weights on the GPU:
# the one computing and the one being prefetched.
SWAP_RESIDENT_BLOCKS = 2


def blocks_to_swap_error(count: int, arch: TransformerArch, label: str) -> str | None:
    """Why ``memory.blocks_to_swap: count`` cannot run on this transformer (None if it can); the one
    wording of the config rule (a named variant) and of the trainer's check (variant auto)."""
    limit = arch.max_blocks_to_swap
    if count <= limit:
        return None
    return (
        f"{count} is more than {label} allows: it has {arch.num_blocks} blocks ({arch.num_layers} double-stream "
        f"+ {arch.num_single_layers} single-stream) and two of them are on the GPU at any time, so at most "
        f"{limit}"
    )


def is_demo(path: str) -> bool:
    """Whether a model.path or dataset.path names the embedded demo ('demo', in any case)."""
    return path.strip().lower() == DEMO_MODEL_PATH


@dataclass(frozen=True)
class TransformerArch:
    """The fields of diffusers' ``Flux2Transformer2DModel`` config that shape memory and LoRA targets."""

    num_layers: int
    num_single_layers: int
    num_attention_heads: int
    attention_head_dim: int
    joint_attention_dim: int
    in_channels: int = 128
    patch_size: int = 1
    mlp_ratio: float = 3.0
    timestep_guidance_channels: int = 256
    axes_dims_rope: tuple[int, ...] = (32, 32, 32, 32)
    rope_theta: int = 2000
    guidance_embeds: bool = True
    out_channels: int | None = None

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.inner_dim * self.mlp_ratio)

    @property
    def num_blocks(self) -> int:
        """Double-stream plus single-stream blocks, in execution order (double first)."""
        return self.num_layers + self.num_single_layers

    @property
    def max_blocks_to_swap(self) -> int:
        """The most blocks ``memory.blocks_to_swap`` may stream: all but the two whose frozen weights the
        GPU holds at once anyway (the one computing and the one being copied in): [dev] 54, [klein] 9B 30,
        [klein] 4B 23, the demo 2."""
        return self.num_blocks - SWAP_RESIDENT_BLOCKS

    def diffusers_config(self) -> dict[str, Any]:
        """Keyword arguments for ``Flux2Transformer2DModel(**...)``."""
        cfg = asdict(self)
        cfg["axes_dims_rope"] = list(self.axes_dims_rope)
        return cfg


@dataclass(frozen=True)
class TextEncoderArch:
    """The text encoder a variant's pipeline uses, enough to size it and to reproduce its embeddings."""

    kind: Literal["mistral3", "qwen3"]
    hidden_size: int
    num_layers: int
    params: int  # total parameters of the module the pipeline loads
    out_layers: tuple[int, ...]  # hidden-state indices the pipeline stacks
    max_sequence_length: int = 512
    intermediate_size: int = 0
    num_attention_heads: int = 0
    num_key_value_heads: int = 0
    head_dim: int = 0
    vocab_size: int = 0

    def transformers_config(self) -> dict[str, Any]:
        """Keyword arguments for the encoder's ``Qwen3Config`` / ``MistralConfig``."""
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": max(self.max_sequence_length, 1024),
        }


@dataclass(frozen=True)
class VaeArch:
    params: int
    encoder_params: int
    decoder_params: int
    latent_channels: int = 32
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    spatial_factor: int = 8  # pixels per latent cell; a transformer token covers 2×2 cells
    sample_size: int = 1024  # tiling starts above this many pixels


@dataclass(frozen=True)
class Variant:
    name: str
    title: str
    pipeline_class: str
    hub_ids: tuple[str, ...]
    transformer: TransformerArch
    text_encoder: TextEncoderArch
    vae: VaeArch
    default_resolution: int
    default_guidance: float | None  # distilled-guidance input during training ([dev] only)
    notes: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)
    # Reference images one edit sample takes (BFL: [klein] up to 4; [dev] takes up to 10, 6 recommended).
    max_references: int = 4

    @property
    def label(self) -> str:
        """The title without the size note: "FLUX.2 [dev]" (what the UI's model picker lists)."""
        return self.title.split(" (")[0]


_FLUX2_VAE = VaeArch(params=84_046_115, encoder_params=34_421_696, decoder_params=49_619_203)

VARIANTS: dict[str, Variant] = {
    "dev": Variant(
        name="dev",
        title="FLUX.2 [dev] (32B)",
        pipeline_class="Flux2Pipeline",
        hub_ids=("black-forest-labs/FLUX.2-dev",),
        transformer=TransformerArch(
            num_layers=8,
            num_single_layers=48,
            num_attention_heads=48,
            attention_head_dim=128,
            joint_attention_dim=15360,
            guidance_embeds=True,
        ),
        text_encoder=TextEncoderArch(
            kind="mistral3",
            hidden_size=5120,
            num_layers=40,
            params=24_011_361_280,
            out_layers=(10, 20, 30),
            intermediate_size=32768,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=131072,
        ),
        vae=_FLUX2_VAE,
        default_resolution=1024,
        default_guidance=1.0,
        notes="Mistral Small 3.x 24B text encoder; guidance-distilled (guidance input during training).",
        max_references=10,
    ),
    "klein-9b": Variant(
        name="klein-9b",
        title="FLUX.2 [klein] 9B",
        pipeline_class="Flux2KleinPipeline",
        hub_ids=("black-forest-labs/FLUX.2-klein-base-9B", "black-forest-labs/FLUX.2-klein-9B"),
        transformer=TransformerArch(
            num_layers=8,
            num_single_layers=24,
            num_attention_heads=32,
            attention_head_dim=128,
            joint_attention_dim=12288,
            guidance_embeds=False,
        ),
        text_encoder=TextEncoderArch(
            kind="qwen3",
            hidden_size=4096,
            num_layers=36,
            params=8_190_735_360,
            out_layers=(9, 18, 27),
            intermediate_size=12288,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
        ),
        vae=_FLUX2_VAE,
        default_resolution=1024,
        default_guidance=None,
        notes="Qwen3-8B text encoder.",
    ),
    "klein-4b": Variant(
        name="klein-4b",
        title="FLUX.2 [klein] 4B",
        pipeline_class="Flux2KleinPipeline",
        hub_ids=("black-forest-labs/FLUX.2-klein-base-4B", "black-forest-labs/FLUX.2-klein-4B"),
        transformer=TransformerArch(
            num_layers=5,
            num_single_layers=20,
            num_attention_heads=24,
            attention_head_dim=128,
            joint_attention_dim=7680,
            guidance_embeds=False,
        ),
        text_encoder=TextEncoderArch(
            kind="qwen3",
            hidden_size=2560,
            num_layers=36,
            params=4_022_468_096,
            out_layers=(9, 18, 27),
            intermediate_size=9728,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
        ),
        vae=_FLUX2_VAE,
        default_resolution=1024,
        default_guidance=None,
        notes="Qwen3-4B text encoder.",
    ),
    # The embedded demo: FLUX.2 [klein] architecture at toy size, built locally by flux2_lora.training.demo_model.
    # The text encoder has 28 layers so the stock pipeline's hidden-state layers (9, 18, 27) exist.
    "demo": Variant(
        name="demo",
        title="Embedded demo (tiny FLUX.2 [klein] architecture)",
        pipeline_class="Flux2KleinPipeline",
        hub_ids=(),
        transformer=TransformerArch(
            num_layers=2,
            num_single_layers=2,
            num_attention_heads=4,
            attention_head_dim=16,
            joint_attention_dim=96,
            in_channels=32,
            timestep_guidance_channels=32,
            axes_dims_rope=(4, 4, 4, 4),
            guidance_embeds=False,
        ),
        text_encoder=TextEncoderArch(
            kind="qwen3",
            hidden_size=32,
            num_layers=28,
            params=270_912,
            out_layers=(9, 18, 27),
            intermediate_size=64,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            vocab_size=600,
        ),
        vae=VaeArch(
            params=69_219,
            encoder_params=0,
            decoder_params=0,
            latent_channels=8,
            block_out_channels=(8, 8, 16, 16),
            sample_size=128,
        ),
        default_resolution=64,
        default_guidance=None,
        notes="Taught a world of plain coloured shapes on first use (cached); a LoRA on it trains on CPU in under a minute.",
    ),
}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown variant {name!r}; known: {', '.join(VARIANT_NAMES)}") from None


def transformer_arch_from_config(cfg: dict[str, Any], where: str = "transformer config") -> TransformerArch:
    """Build a :class:`TransformerArch` from a diffusers ``transformer/config.json`` dict; every number is
    type- and range-checked (:class:`ModelConfigError` naming ``where`` and the key)."""
    defaults = TransformerArch(
        num_layers=8,
        num_single_layers=48,
        num_attention_heads=48,
        attention_head_dim=128,
        joint_attention_dim=15360,
    )
    arch = replace(defaults, **check_transformer_config(cfg, where))
    check_transformer_shape(
        arch.num_attention_heads,
        arch.attention_head_dim,
        arch.axes_dims_rope,
        arch.num_layers + arch.num_single_layers,
        where,
    )
    return arch


def _same_shape(a: TransformerArch, b: TransformerArch) -> bool:
    keys = (
        "num_layers",
        "num_single_layers",
        "num_attention_heads",
        "attention_head_dim",
        "joint_attention_dim",
    )
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def variant_from_transformer_arch(arch: TransformerArch) -> str | None:
    for name, v in VARIANTS.items():
        if _same_shape(arch, v.transformer):
            return name
    return None


_HUB_PATTERNS = (
    (re.compile(r"flux\.?2[-_.]?dev", re.I), "dev"),
    (re.compile(r"klein[-_.]?(base[-_.]?)?9b", re.I), "klein-9b"),
    (re.compile(r"klein[-_.]?(base[-_.]?)?4b", re.I), "klein-4b"),
)


def variant_from_name(path: str) -> str | None:
    """Guess the variant from a hub id or folder name (used when no config.json can be read)."""
    if is_demo(path):
        return "demo"
    for pattern, name in _HUB_PATTERNS:
        if pattern.search(path):
            return name
    return None


def _transformer_config_file(path: str | Path) -> Path | None:
    p = Path(path).expanduser()
    if (p / "transformer" / "config.json").exists():
        return p / "transformer" / "config.json"
    if (p / "config.json").is_file():  # the path may be a transformer folder itself
        return p / "config.json"
    return None


def read_local_transformer_config(path: str | Path) -> dict[str, Any] | None:
    """The transformer's config.json of a local diffusers folder, or None if there is none.

    A damaged or foreign ``transformer/config.json`` raises :class:`ModelConfigError` naming it."""
    file = _transformer_config_file(path)
    if file is None:
        return None
    data = read_config_json(file)
    if "num_single_layers" not in data:
        if file.parent.name == "transformer":
            raise ModelConfigError(f"{file}: not a FLUX.2 transformer config (no num_single_layers)")
        return None
    return data


@contextmanager
def _names_model_path() -> Iterator[None]:
    """ModelConfigError messages say which config field the folder came from."""
    try:
        yield
    except ModelConfigError as e:
        if str(e).startswith("model.path: "):
            raise
        raise ModelConfigError(f"model.path: {e}") from None


def read_local_text_encoder(path: str | Path) -> dict[str, int] | None:
    """Size numbers of a local folder's text encoder (``text_encoder/config.json``), or None."""
    file = Path(path).expanduser() / "text_encoder" / "config.json"
    if not file.exists():
        return None
    with _names_model_path():
        return check_text_encoder_config(read_config_json(file), str(file))


def local_text_encoder_arch(path: str | Path, base: TextEncoderArch) -> TextEncoderArch:
    """``base`` with the sizes a local folder's own text encoder config gives (unchanged without one)."""
    te = read_local_text_encoder(path)
    if te is None:
        return base
    heads = te.get("num_attention_heads", base.num_attention_heads)
    return replace(
        base,
        num_layers=te["num_hidden_layers"],
        hidden_size=te["hidden_size"],
        intermediate_size=te.get("intermediate_size", base.intermediate_size),
        num_attention_heads=heads,
        num_key_value_heads=te.get("num_key_value_heads", base.num_key_value_heads),
        head_dim=te.get("head_dim", te["hidden_size"] // heads),
        vocab_size=te.get("vocab_size", base.vocab_size),
    )


def local_vae_arch(path: str | Path, base: VaeArch) -> VaeArch:
    """``base`` with a local folder's own VAE widths and downsampling (``vae/config.json``), if any."""
    file = Path(path).expanduser() / "vae" / "config.json"
    if not file.exists():
        return base
    with _names_model_path():
        vae = replace(base, **check_vae_config(read_config_json(file), str(file)))
    return replace(vae, spatial_factor=2 ** (len(vae.block_out_channels) - 1))


def text_encoder_layers(path: str, variant: str, requested: Sequence[int] = ()) -> tuple[int, ...]:
    """The hidden-state layers to encode prompts with, for a model path: checked against a local
    folder's own text encoder and transformer configs, else the variant's table. ValueError if
    ``requested`` cannot work or the folder's encoder and transformer do not fit together."""
    v = get_variant(variant)
    depth, hidden = v.text_encoder.num_layers, v.text_encoder.hidden_size
    joint = v.transformer.joint_attention_dim
    if not is_demo(path) and Path(path).expanduser().is_dir():
        te = read_local_text_encoder(path)
        if te is not None:
            depth, hidden = te["num_hidden_layers"], te["hidden_size"]
        with _names_model_path():
            local = read_local_transformer_config(path)
            if local is not None:
                where = str(_transformer_config_file(path))
                joint = transformer_arch_from_config(local, where).joint_attention_dim
        if te is not None and local is not None and joint % hidden:
            raise ModelConfigError(
                f"model.path: {path}: the transformer's joint_attention_dim ({joint}) is not a multiple of the "
                f"text encoder's hidden_size ({hidden}); the two do not belong together"
            )
    count = None if joint % hidden else joint // hidden  # unknown when only one side is the folder's own
    return choose_text_encoder_layers(v.text_encoder.out_layers, depth, count, requested)


@dataclass(frozen=True)
class ResolvedModel:
    """What a model path resolves to without loading any weights.

    ``custom``: a local transformer of no known shape; ``variant`` then names only the pipeline family
    it runs with, and every size comes from its own config."""

    variant: str
    arch: TransformerArch
    source: Literal["demo", "local", "hub-name", "given"]
    custom: bool = False

    @property
    def title(self) -> str:
        if not self.custom:
            return VARIANTS[self.variant].title
        a = self.arch
        return (
            f"custom FLUX.2 model ({a.num_layers} + {a.num_single_layers} blocks, {a.num_attention_heads} × "
            f"{a.attention_head_dim} heads; sized from its own config, run with the "
            f"{VARIANTS[self.variant].pipeline_class})"
        )


def resolve_model(path: str, variant: str = "auto") -> ResolvedModel:
    """Work out variant and transformer shape from the config's model section.

    A local folder's own config.json wins (a fine-tune or a future release may differ from the
    table); an explicit variant that contradicts it raises ValueError.
    """
    if is_demo(path):
        if variant not in ("auto", "demo"):
            raise ValueError(f"model.variant: {variant!r} does not match the embedded demo model")
        return ResolvedModel("demo", VARIANTS["demo"].transformer, "demo")
    with _names_model_path():
        local = read_local_transformer_config(path)
        arch = (
            None
            if local is None
            else transformer_arch_from_config(local, str(_transformer_config_file(path)))
        )
    if arch is not None:
        detected = variant_from_transformer_arch(arch)
        if variant != "auto":
            if detected is not None and detected != variant:
                raise ValueError(
                    f"model.variant: {variant!r} was given but {path} has a {detected} transformer"
                )
            return ResolvedModel(variant, arch, "local", custom=detected is None)
        if detected is None:
            # An unknown shape still trains: sized as what it is, run with the pipeline of its family
            # (guidance input: [dev]'s Flux2Pipeline; none: [klein]'s).
            return ResolvedModel("dev" if arch.guidance_embeds else "klein-9b", arch, "local", custom=True)
        return ResolvedModel(detected, arch, "local")
    if variant != "auto":
        return ResolvedModel(variant, get_variant(variant).transformer, "given")
    guessed = variant_from_name(path)
    if guessed is None:
        raise ValueError(
            f"model.variant: cannot tell the FLUX.2 variant of {path!r}; set model.variant to one of "
            f"{', '.join(v for v in VARIANT_NAMES if v != 'demo')}"
        )
    return ResolvedModel(guessed, get_variant(guessed).transformer, "hub-name")


def local_component_params(path: str | Path, subfolder: str) -> int | None:
    """Exact parameter count of a local component, from its safetensors headers (no weights read)."""
    return safetensors_params(Path(path).expanduser() / subfolder)
