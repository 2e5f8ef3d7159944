"""GPU memory of a training run, from the architecture and the config (pure Python, no torch).

The run goes through three phases, in the trainer's order (trainer.py): caching (text encoder and VAE
on the GPU, encoding captions and images, before the transformer is loaded), training steps, and
validation sampling between steps. Each phase's tensor memory is estimated; the peak is the largest.
Static memory is counted exactly from the module shapes (weights per dtype or quantization format,
the fp32 LoRA copy, its gradients and optimizer state); activations come from
:mod:`flux2_lora.memory.activations` and :mod:`flux2_lora.memory.encoders`, whose coefficients tests
check against fake-tensor traces of the real modules (:mod:`flux2_lora.training.trace`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from flux2_lora.config import TrainConfig
from flux2_lora.memory.activations import (
    ByBlock,
    activation_profile,
    inference_transient,
    targets_by_block,
    training_step_activations,
)
from flux2_lora.memory.adapters import AdapterKind, adapter_kind
from flux2_lora.memory.encoders import (
    IMAGE_BATCH,
    PROMPT_BATCH,
    text_encoder_activation_bytes,
    text_encoder_dequant_bytes,
    text_encoder_linears,
    text_encoder_weight_bytes,
    vae_bytes,
)
from flux2_lora.memory.options import loss_extra_bytes
from flux2_lora.memory.sharded import (
    FsdpLayout,
    Moments,
    Units,
    frozen_params,
    fsdp_layout,
    fsdp_moments,
    fsdp_training,
    gathered_forward,
    lora_params,
)
from flux2_lora.memory.static import BNB_MIN_8BIT_SIZE as BNB_MIN_8BIT_SIZE  # re-exported (training/trace)
from flux2_lora.memory.static import (
    CACHES,
    Adapter,
    Swap,
    block_swap,
    frozen_weights,
    linears,
    lora_adapter,
    optimizer_memory,
    target_specs,
)
from flux2_lora.memory.static import NF4_BYTES_PER_WEIGHT as NF4_BYTES_PER_WEIGHT
from flux2_lora.targets import LinearSpec
from flux2_lora.units import GIB
from flux2_lora.variants import (
    TextEncoderArch,
    TransformerArch,
    VaeArch,
    get_variant,
    is_demo,
    local_component_params,
    local_text_encoder_arch,
    local_vae_arch,
    resolve_model,
    text_encoder_layers,
)

DTYPE_BYTES = {"auto": 2, "bfloat16": 2, "float16": 2, "float32": 4}
# Measured on an H200 (benchmarks/vram/measured.json): nvidia-smi showed max_memory_reserved + 0.74 GiB
# in every training process (CUDA context, cuBLAS/cuDNN workspaces: outside PyTorch's allocator), and
# the caching allocator reserved 0.4–4.6% above the allocated peak for plain bf16 runs, 5.9–14.1% for
# NF4, int8 and DoRA ones (their per-layer dequantized weights and dense DoRA terms fragment it).
CUDA_CONTEXT_GIB = 0.74
ALLOCATOR_SLACK = 0.05
ALLOCATOR_SLACK_QUANTIZED = 0.12


def allocator_slack(config: TrainConfig) -> float:
    """reserved ≈ allocated × (1 + slack): what the caching allocator holds beyond the tensors."""
    if config.memory.quantization != "none" or config.lora.use_dora:
        return ALLOCATOR_SLACK_QUANTIZED
    return ALLOCATOR_SLACK


# Multi-GPU (DDP through accelerate): NCCL's communicator buffers, outside PyTorch's allocator.
NCCL_GIB = 0.3


@dataclass(frozen=True)
class Shapes:
    variant: str  # "custom" for a local transformer of no known shape
    arch: TransformerArch
    text_encoder: TextEncoderArch
    vae: VaeArch
    weight_bytes: int
    image_tokens: int  # the largest sample's: target + its references (edit LoRAs)
    text_tokens: int
    title: str = ""
    reference_tokens: int = 0  # of those, the references' (0: text-to-image)


@functools.lru_cache(maxsize=64)
def _model_shapes(
    path: str, variant: str, stamp: float
) -> tuple[str, TransformerArch, TextEncoderArch, VaeArch, str]:
    """Variant, transformer, text encoder, VAE and title of a model path (cached: a local folder's
    config.json and safetensors headers are read once per modification time ``stamp``).

    A local folder whose configs are broken raises :class:`ModelConfigError`: an estimate of some other
    model would be a wrong answer, not a fallback."""
    custom = False
    # An unrecognised hub id or folder raises (ValueError, naming the field): assess() reports it as an
    # unknown model; sizing it as some default variant would be a wrong answer, not an estimate.
    resolved = resolve_model(path, variant)
    name, arch, custom, title = resolved.variant, resolved.arch, resolved.custom, resolved.title
    v = get_variant(name)
    te, vae = v.text_encoder, v.vae
    if stamp:
        # A local folder may hold other components than the table's (a fine-tune, a custom small model).
        te = local_text_encoder_arch(path, te)
        vae = local_vae_arch(path, vae)
        te = dataclasses.replace(te, out_layers=text_encoder_layers(path, name))
        te_params = local_component_params(path, "text_encoder")
        vae_params = local_component_params(path, "vae")
        if te_params is not None:
            te = dataclasses.replace(te, params=te_params)
        if vae_params is not None:
            vae = dataclasses.replace(vae, params=vae_params)
    return ("custom" if custom else name), arch, te, vae, title


_SAME_FILES = threading.local()


@contextlib.contextmanager
def same_model_files() -> Iterator[None]:
    """Within it, each model path's files (and each dataset's references) are looked at once (the
    recommendations' dozens of re-estimates of one model need not stat its folders each time)."""
    outer = getattr(_SAME_FILES, "stamps", None)
    outer_shapes = getattr(_SAME_FILES, "shapes", None)
    _SAME_FILES.stamps = {} if outer is None else outer
    _SAME_FILES.shapes = {} if outer_shapes is None else outer_shapes  # resolve_shapes' answers, likewise
    try:
        yield
    finally:
        _SAME_FILES.stamps, _SAME_FILES.shapes = outer, outer_shapes


def _stamp(path: str) -> float:
    """Newest modification time of a local model folder's configs (0 for hub ids and the demo)."""
    stamps = getattr(_SAME_FILES, "stamps", None)
    if stamps is None:
        return _read_stamp(path)
    if path not in stamps:
        stamps[path] = _read_stamp(path)
    return float(stamps[path])


def _read_stamp(path: str) -> float:
    if is_demo(path):
        return 0.0
    p = os.path.expanduser(path)
    if not os.path.isdir(p):  # a hub id
        return 0.0
    stamp = 0.0
    for parts in (("transformer", "config.json"), ("config.json",), ("text_encoder", "config.json")):
        try:
            stamp = max(stamp, os.stat(os.path.join(p, *parts)).st_mtime)
        except OSError:
            continue
    return stamp


def sized_resolution(config: TrainConfig) -> int:
    """The resolution the estimate sizes: the largest of the run's datasets (an entry of dataset.extra may
    train larger than dataset.resolution, and its batches set the step's peak)."""
    if not config.dataset.extra:
        return config.dataset.resolution
    from flux2_lora.data.entries import largest_resolution

    return largest_resolution(config)


def resolve_shapes(config: TrainConfig) -> Shapes:
    m, ds = config.model, config.dataset
    known = getattr(_SAME_FILES, "shapes", None)
    if known is None:
        return _resolve_shapes(config)
    # Within same_model_files: the model's and the dataset's files are looked at once per setting.
    key = (
        m.path,
        m.variant,
        m.dtype,
        sized_resolution(config),
        ds.path,
        ds.reference_path,
        ds.reference_max_pixels,
    )
    if key not in known:
        known[key] = _resolve_shapes(config)
    return known[key]


def _resolve_shapes(config: TrainConfig) -> Shapes:
    from flux2_lora.data.references import largest_reference_tokens

    m, ds = config.model, config.dataset
    shapes = _shapes(m.path, m.variant, _stamp(m.path), m.dtype, sized_resolution(config))
    # Edit LoRAs: the references' tokens join the sequence (image headers of the dataset, cached).
    refs = largest_reference_tokens(ds.path, ds.reference_path, ds.reference_max_pixels)
    if not refs:
        return shapes
    side = 2 * shapes.vae.spatial_factor  # pixels per token side; the count above is for FLUX.2's 16
    refs = refs * 16 * 16 // (side * side)
    return dataclasses.replace(shapes, image_tokens=shapes.image_tokens + refs, reference_tokens=refs)


@functools.lru_cache(maxsize=256)
def _shapes(path: str, variant: str, stamp: float, dtype: str, res: int) -> Shapes:
    name, arch, te, vae, title = _model_shapes(path, variant, stamp)
    return Shapes(
        title=title,
        variant=name,
        arch=arch,
        text_encoder=te,
        vae=vae,
        weight_bytes=DTYPE_BYTES[dtype],
        image_tokens=(res // (2 * vae.spatial_factor)) ** 2,  # a token is 2×2 latent cells
        text_tokens=te.max_sequence_length,
    )


@dataclass
class Estimate:
    """GiB figures of one configuration (see :func:`estimate`).

    ``components`` break down the peak phase and add up to ``total_gib``; ``phase_components`` has the
    breakdown of every phase (tensor memory only)."""

    variant: str  # "custom" for a local transformer of no known shape (see ``model``)
    trainable_params: int
    components: dict[str, float]
    phases: dict[str, float]
    peak_phase: str
    allocated_peak_gib: float
    total_gib: float
    image_tokens: int
    text_tokens: int
    phase_components: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    model: str = ""  # the model's title
    # Block swap (memory.blocks_to_swap), when on: blocks, pinned host GiB, GPU buffer GiB, GiB copied per
    # step. Left out of to_dict when off, so reports of runs without swap keep their keys.
    swap: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        # asdict's deep copy is a tenth of a report; the values are floats, strings and their dicts/lists.
        out = {f.name: _copied(getattr(self, f.name)) for f in fields(self)}
        if self.swap is None:
            del out["swap"]
        return out


def _copied(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copied(v) for v in value]
    return value


_KEYS = ("weights", "lora", "gradients", "optimizer", "activations", "text_encoder", "vae")


def _part(**parts: float) -> dict[str, float]:
    keys = (*_KEYS, "gathered") if "gathered" in parts else _KEYS  # FSDP: the units gathered then
    if parts.get("ema"):  # training.ema_decay > 0 with the EMA on the GPU
        keys = (*keys, "ema")
    if "swap_buffers" in parts:  # block swap: the two GPU buffers swapped blocks stream through
        keys = (*keys, "swap_buffers")
    return {k: parts.get(k, 0.0) / GIB for k in keys}


def _gib(part: dict[str, float]) -> float:
    """The sum of a phase's components (GiB from a _part, bytes from the phases' own dicts)."""
    return sum(part.values())


# Everything below depends on the architecture and a few settings only: cached, so that the re-estimates
# of recommendations and of the UI's live panel cost microseconds. Keys are small hashable values.
class _Acts(NamedTuple):
    """What the transformer's activation figures depend on (their caches' key; a tuple hashes fast)."""

    tokens: tuple[str, ...]
    arch: TransformerArch
    dtype_bytes: int
    img: int
    txt: int
    batch: int
    checkpointing: bool
    dora: bool
    kernels: str
    quantization: str
    adapter: str = "lora"  # lora.type: LoKr / LoHa add their delta weights' terms (memory/adapter_acts.py)

    def specs(self) -> list[LinearSpec]:
        return list(target_specs(self.tokens, self.arch))

    def by_block(self) -> ByBlock:
        return _by_block(self.tokens, self.arch)

    def step_kwargs(self) -> dict[str, Any]:
        """The keyword arguments every per-step activation function takes from this key."""
        return {
            "dtype_bytes": self.dtype_bytes,
            "img": self.img,
            "txt": self.txt,
            "batch": self.batch,
            "checkpointing": self.checkpointing,
            "dora": self.dora,
            "kernels": self.kernels,
            "by_block": self.by_block(),
        }


@functools.lru_cache(maxsize=256)
def _by_block(tokens: tuple[str, ...], arch: TransformerArch) -> ByBlock:
    return targets_by_block(arch, target_specs(tokens, arch))


@functools.lru_cache(maxsize=1024)
def _step_activations(k: _Acts) -> tuple[float, float]:
    """(at the start of backward, at its end): see training_step_activations."""
    return training_step_activations(
        k.arch, k.specs(), quantization=k.quantization, adapter=k.adapter, **k.step_kwargs()
    )


@functools.lru_cache(maxsize=256)
def _profile(k: _Acts) -> tuple[list[float], list[float]]:
    # FSDP gathers the LoRA in the weights' dtype: bf16_lora.
    return activation_profile(k.arch, k.specs(), bf16_lora=True, **k.step_kwargs())


@functools.lru_cache(maxsize=256)
def _inference(
    tokens: tuple[str, ...], arch: TransformerArch, dtype_bytes: int, img: int, txt: int, dora: bool
) -> float:
    specs = list(target_specs(tokens, arch))
    return inference_transient(arch, specs, dtype_bytes=dtype_bytes, img=img, txt=txt, dora=dora)


@functools.lru_cache(maxsize=256)
def _layout(
    tokens: tuple[str, ...], arch: TransformerArch, rank: int, dora: bool, dtype_bytes: int, n: int
) -> FsdpLayout:
    return fsdp_layout(arch, _frozen_units(arch), _lora_units(tokens, arch, rank, dora), dtype_bytes, n)


@functools.lru_cache(maxsize=64)
def _frozen_units(arch: TransformerArch) -> Units:
    return frozen_params(arch, linears(arch))


@functools.lru_cache(maxsize=256)
def _lora_units(tokens: tuple[str, ...], arch: TransformerArch, rank: int, dora: bool) -> Units:
    return lora_params(target_specs(tokens, arch), rank, dora)


@functools.lru_cache(maxsize=256)
def _moments(k: _Acts, rank: int, n: int, reshard: bool) -> Moments:
    layout = _layout(k.tokens, k.arch, rank, k.dora, k.dtype_bytes, n)
    return fsdp_moments(layout, _profile(k), k.dtype_bytes, reshard)


@functools.lru_cache(maxsize=256)
def _sampling_gathered(layout: FsdpLayout, reshard: bool) -> float:
    """Gathered bytes of the sharded no-grad forward (its activations are counted apart)."""
    return gathered_forward(layout, [0.0] * len(layout.units), reshard)[0]


def clear_caches() -> None:
    """Forget cached shapes (for benchmarks of a cold estimate, and after a model folder changes)."""
    from flux2_lora.memory.timing import _block_weights, _step_time, block_flops

    _step_time.cache_clear()
    block_flops.cache_clear()
    _block_weights.cache_clear()
    for f in (
        _model_shapes,
        _shapes,
        *CACHES,
        text_encoder_linears,
        text_encoder_weight_bytes,
        _by_block,
        _step_activations,
        _profile,
        _inference,
        _layout,
        _frozen_units,
        _lora_units,
        _moments,
        _sampling_gathered,
        _frozen,
        _trainable,
    ):
        f.cache_clear()


@dataclass(slots=True)
class _Run:
    """The facts of one configuration that every phase reads (bytes, per process)."""

    config: TrainConfig
    shapes: Shapes
    tokens: tuple[str, ...]
    adapter: Adapter
    acts: _Acts  # the activation figures' key
    num_processes: int
    kernels: str
    fsdp: bool  # sharded over more than one process
    accumulating: bool  # gradients accumulate over micro-batches
    weights: float  # the transformer's frozen weights on the GPU (with QLoRA's dequantized transient)
    swap: Swap | None  # block swap, when on (not under FSDP)
    lora: float  # the fp32 adapter (model.inject_lora)
    ema: float  # the fp32 EMA of the adapter when it is on the GPU (training/ema.py; main process)
    loss_extra: float  # masked loss / prior prediction tensors at the loss (memory/options.py)
    ddp: float  # DDP's gradient buckets
    optimizer: float  # optimizer state
    step: float  # one optimizer step's temporaries
    te_weights: float  # as loaded (memory.text_encoder_quantization)
    te_dequant: float  # a quantized encoder's per-Linear dequantized transient
    vae_weights: float
    te_train: float  # the text encoder's weights on the GPU while training
    vae_train: float  # the VAE's


ShapeKey = tuple[str, str, float, str, int]  # _shapes' arguments: flat values that hash fast


def _frozen_of(
    sh: Shapes, quantization: str, swapped: int, te_q: str
) -> tuple[float, Swap | None, float, float]:
    """(transformer weights on the GPU, block swap, text encoder weights, its dequantized transient)."""
    wb = sh.weight_bytes
    weights = frozen_weights(sh.arch, wb, quantization)
    swap = None
    if swapped:
        swap = block_swap(sh.arch, wb, quantization, swapped)
        weights -= swap.pinned  # the buffers are a component of their own (_static)
    te = sh.text_encoder
    return weights, swap, text_encoder_weight_bytes(te, wb, te_q), text_encoder_dequant_bytes(te, wb, te_q)


def _trainable_of(
    sh: Shapes,
    tokens: tuple[str, ...],
    rank: int,
    dora: bool,
    optimizer: str,
    momentum: float,
    decay: float,
    kind: AdapterKind,
) -> tuple[Adapter, float, float]:
    """(the adapter, its optimizer state, one optimizer step's temporaries)."""
    state, step = optimizer_memory(tokens, sh.arch, rank, dora, optimizer, momentum, decay, kind)
    return lora_adapter(tokens, sh.arch, rank, dora, kind), state, step


# The same, cached by the flat _shapes key (a Shapes hashes slowly: it holds three architectures).
@functools.lru_cache(maxsize=1024)
def _frozen(
    key: ShapeKey, quantization: str, swapped: int, te_q: str
) -> tuple[float, Swap | None, float, float]:
    return _frozen_of(_shapes(*key), quantization, swapped, te_q)


@functools.lru_cache(maxsize=1024)
def _trainable(
    key: ShapeKey,
    tokens: tuple[str, ...],
    rank: int,
    dora: bool,
    optimizer: str,
    momentum: float,
    decay: float,
    kind: AdapterKind,
) -> tuple[Adapter, float, float]:
    return _trainable_of(_shapes(*key), tokens, rank, dora, optimizer, momentum, decay, kind)


def _shape_key(config: TrainConfig) -> ShapeKey:
    m = config.model
    return (m.path, m.variant, _stamp(m.path), m.dtype, sized_resolution(config))


def _static_of(
    config: TrainConfig, num_processes: int
) -> tuple[Shapes, tuple[Adapter, float, float], tuple[float, Swap | None, float, float], bool]:
    """The shapes, (adapter, optimizer state, step temporaries), (frozen weights, block swap, text encoder
    weights, its transient) and whether FSDP shards the run: what :func:`_run` and :func:`host_facts`
    read."""
    mem, lora, t = config.memory, config.lora, config.training
    sh = resolve_shapes(config)
    key = _shape_key(config)
    cached = sh is _shapes(*key)  # else a Shapes of someone's making (tests' reduced architectures)
    tokens = tuple(lora.target_modules)
    kind = adapter_kind(lora)  # lora.type: LoRA, LoKr or LoHa tensors
    trainable = (lora.rank, lora.use_dora, t.optimizer, t.momentum, t.weight_decay, kind)
    adapter = _trainable(key, tokens, *trainable) if cached else _trainable_of(sh, tokens, *trainable)
    fsdp = config.distributed.strategy == "fsdp" and num_processes > 1
    frozen = (mem.quantization, 0 if fsdp else mem.blocks_to_swap, mem.text_encoder_quantization)
    return sh, adapter, _frozen(key, *frozen) if cached else _frozen_of(sh, *frozen), fsdp


class HostFacts(NamedTuple):
    """What :func:`flux2_lora.memory.host.gpu_host_peak` reads of an :class:`Estimate`."""

    swap: dict[str, float] | None
    trainable_params: int


def host_facts(config: TrainConfig, num_processes: int | None = None) -> HostFacts:
    """The :class:`Estimate`'s ``swap`` and ``trainable_params`` without the estimate (a fraction of its
    cost: the recommendations judge host RAM first, and many candidates fail there)."""
    _, (adapter, _, _), (_, swap, _, _), _ = _static_of(
        config, num_processes or config.distributed.world_size
    )
    return HostFacts(_swap_dict(swap), adapter.params)


def _swap_dict(swap: Swap | None) -> dict[str, float] | None:
    if swap is None:
        return None
    return {
        "blocks": swap.blocks,
        "pinned_gib": swap.pinned / GIB,
        "buffers_gib": swap.buffers / GIB,
        "copied_gib_per_step": swap.copied / GIB,
    }


def _run(config: TrainConfig, num_processes: int, kernels: str) -> _Run:
    mem, lora, t = config.memory, config.lora, config.training
    sh, (adapter, optimizer, step), (weights, swap, te_w, te_dequant), fsdp = _static_of(
        config, num_processes
    )
    wb, tokens = sh.weight_bytes, tuple(lora.target_modules)
    vae_w = sh.vae.params * wb
    return _Run(
        config=config,
        shapes=sh,
        tokens=tokens,
        adapter=adapter,
        acts=_Acts(
            tokens,
            sh.arch,
            wb,
            sh.image_tokens,
            sh.text_tokens,
            t.batch_size,
            mem.gradient_checkpointing,
            lora.use_dora,
            kernels,
            mem.quantization,
            lora.type,
        ),
        num_processes=num_processes,
        kernels=kernels,
        fsdp=fsdp,
        accumulating=t.gradient_accumulation_steps > 1,
        weights=weights,
        swap=swap,
        lora=4.0 * adapter.params,
        ema=4.0 * adapter.params if t.ema_decay > 0 and t.ema_device == "gpu" else 0.0,
        loss_extra=loss_extra_bytes(config, sh.image_tokens, sh.arch.in_channels),
        # DDP's gradient buckets, allocated with the model: an fp32 copy for all-reduce.
        ddp=4.0 * adapter.params if num_processes > 1 and not fsdp else 0.0,
        optimizer=optimizer,
        step=step,
        te_weights=te_w,
        te_dequant=te_dequant,
        vae_weights=vae_w,
        # Components kept on the GPU while training: those not cached and not offloaded to the CPU.
        te_train=te_w if not mem.cache_text_embeddings and not mem.cpu_offload else 0.0,
        vae_train=vae_w if not mem.cache_latents and not mem.cpu_offload else 0.0,
    )


@dataclass(slots=True)
class _CachingFacts:
    """What :func:`_caching` reads of a :class:`_Run` (for :func:`caching_total_gib`, which needs no more)."""

    config: TrainConfig
    shapes: Shapes
    te_weights: float
    te_dequant: float
    vae_weights: float


# What caching_total_gib reads of a config: whole sections, and single fields of others (the
# recommendations reuse its answer for sets of moves that differ only elsewhere: the optimizer, the
# batch, block swap, the rank). A field read here and missing there shows in tests/memory/
# test_recommend_speed.py (recommendations that differ from those of a search without the floor).
CACHING_READS = frozenset(
    {
        "model",
        "dataset",
        "validation",
        "distributed",
        "lora.use_dora",  # allocator_slack
        "memory.quantization",  # allocator_slack; the text encoder's bytes are looked up beside it
        "memory.text_encoder_quantization",
        "memory.cpu_offload",
        "memory.cache_text_embeddings",
        "memory.cache_latents",
        "memory.vae_slicing",
        "memory.vae_tiling",
    }
)


def caching_total_gib(config: TrainConfig, num_processes: int | None = None) -> float:
    """The caching phase's figure as :func:`estimate` would total it (overhead included): a floor of the
    estimate's total, for a fraction of its cost (the recommendations skip configs it already rules out).
    It reads only the sections and fields in :data:`CACHING_READS`."""
    num_processes = num_processes or config.distributed.world_size
    mem = config.memory
    key = _shape_key(config)
    sh = resolve_shapes(config)
    frozen = (mem.quantization, 0, mem.text_encoder_quantization)
    _, _, te_w, te_dequant = _frozen(key, *frozen) if sh is _shapes(*key) else _frozen_of(sh, *frozen)
    facts = _CachingFacts(config, sh, te_w, te_dequant, sh.vae.params * sh.weight_bytes)
    peak = _gib(_part(**_caching(facts)))
    return peak + _overhead(config, peak, num_processes)


def _caching(r: _Run | _CachingFacts) -> dict[str, float]:
    """Bytes by component (see _part for GiB). Caching: the text encoder (unless it encodes on the CPU) and the VAE on the GPU, no transformer
    yet; the text encoder is freed after caching its embeddings, otherwise it stays for training."""
    c, sh = r.config, r.shapes
    mem, val, wb = c.memory, c.validation, sh.weight_bytes
    te_gpu = 0.0 if mem.cpu_offload else r.te_weights
    # Every caption when caching them, else only the validation prompts (and the empty CFG prompt).
    if mem.cache_text_embeddings:
        prompts = PROMPT_BATCH
    else:
        prompts = min(PROMPT_BATCH, (len(val.prompts) or 1) + 1) if val.enabled else 0
    te_act = text_encoder_activation_bytes(sh.text_encoder, wb, prompts) + r.te_dequant if te_gpu else 0.0
    caching_te = {"text_encoder": te_gpu, "vae": r.vae_weights, "activations": te_act}
    if not mem.cache_latents:
        return caching_te
    te_kept = te_gpu if not mem.cache_text_embeddings else 0.0
    images = vae_bytes(
        sh.vae,
        wb,
        sized_resolution(c),
        batch=IMAGE_BATCH,
        decode=False,
        slicing=mem.vae_slicing,
        tiling=mem.vae_tiling,
    )
    caching_vae = {"text_encoder": te_kept, "vae": r.vae_weights, "activations": images}
    return max(caching_te, caching_vae, key=_gib)


def _encoding(r: _Run) -> float:
    """Encoding a batch that is not cached, before the forward pass (without its activations)."""
    sh, mem = r.shapes, r.config.memory
    encode = 0.0
    if r.te_train:
        encode = text_encoder_activation_bytes(sh.text_encoder, sh.weight_bytes, r.config.training.batch_size)
        encode += r.te_dequant
    if r.vae_train:
        vae = vae_bytes(
            sh.vae,
            sh.weight_bytes,
            sized_resolution(r.config),
            batch=1,
            decode=False,
            slicing=True,
            tiling=mem.vae_tiling,
        )
        encode = max(encode, vae)
    return encode


def _static(r: _Run) -> dict[str, float]:
    out = dict(weights=r.weights, lora=r.lora, ema=r.ema, text_encoder=r.te_train, vae=r.vae_train)
    if r.swap is not None:
        out["swap_buffers"] = r.swap.buffers
    return out


def _backward_start(r: _Run, act: float, encode: float) -> dict[str, float]:
    """Backward peaks at its start (the last block), when only that block's gradients exist, unless
    gradients accumulate over micro-batches: then all of them live through the later ones."""
    grads = r.lora if r.accumulating else 4.0 * r.adapter.last_block
    acts = max(act, encode) + r.loss_extra
    return {**_static(r), "gradients": grads + r.ddp, "optimizer": r.optimizer, "activations": acts}


def _backward_end(r: _Run, act: float) -> dict[str, float]:
    """The end of backward: every gradient but the first LoRA'd block's, with that block's activations."""
    grads = r.lora if r.accumulating else r.lora - 4.0 * r.adapter.first_block
    return {**_static(r), "gradients": grads + r.ddp, "optimizer": r.optimizer, "activations": act}


def _optimizer_step(r: _Run) -> dict[str, float]:
    """The optimizer step: every gradient plus the step's temporaries."""
    return {**_static(r), "gradients": r.lora + r.ddp, "optimizer": r.optimizer + r.step}


def _fsdp_training(r: _Run, encode: float) -> tuple[dict[str, float], FsdpLayout]:
    """One FSDP rank's training step (memory.sharded), and the layout of its shards."""
    c, sh = r.config, r.shapes
    lora, dist, wb = c.lora, c.distributed, sh.weight_bytes
    layout = _layout(r.tokens, sh.arch, lora.rank, lora.use_dora, wb, r.num_processes)
    parts = fsdp_training(
        layout,
        _moments(r.acts, lora.rank, r.num_processes, dist.fsdp_reshard_after_forward),
        r.adapter.params,
        r.optimizer,
        r.step,
        r.accumulating,
        encode,
        r.te_train,
        r.vae_train,
        dist.fsdp_cpu_offload,
    )
    return _part(**parts), layout


def _training(r: _Run) -> tuple[dict[str, float], FsdpLayout | None]:
    """The training step's peak: the largest of the start of backward (activations, few gradients), its
    end (most gradients, the first block's activations) and the optimizer step; under FSDP, one rank's."""
    encode = _encoding(r)
    if r.fsdp:
        return _fsdp_training(r, encode)
    start, end = _step_activations(r.acts)
    moments = (_backward_start(r, start, encode), _backward_end(r, end), _optimizer_step(r))
    # Compared in bytes: only the largest is converted (the recommendations make dozens of estimates).
    return _part(**max(moments, key=_gib)), None


def _sampling(r: _Run, layout: FsdpLayout | None) -> dict[str, float]:
    """Validation: one no-grad forward per denoising step (classifier-free guidance runs its two passes
    one after the other), then a VAE decode; optimizer state stays, gradients were set to None."""
    c, sh = r.config, r.shapes
    mem, wb = c.memory, sh.weight_bytes
    infer = _inference(r.tokens, sh.arch, wb, sh.image_tokens, sh.text_tokens, c.lora.use_dora)
    decode = vae_bytes(
        sh.vae,
        wb,
        sized_resolution(c),
        batch=1,
        decode=True,
        slicing=mem.vae_slicing,
        tiling=mem.vae_tiling,
    )
    if layout is None:
        return _part(
            **_static(r),
            optimizer=r.optimizer,
            gradients=r.ddp,
            activations=max(infer, decode),
        ) | {"vae": r.vae_weights / GIB}
    # Every process runs the sharded forward, gathering unit by unit.
    share = layout.sharded_lora / max(r.adapter.params, 1)
    return _part(
        weights=layout.sharded_weights,
        lora=4.0 * layout.sharded_lora,
        optimizer=r.optimizer * share,
        activations=max(infer, decode),
        text_encoder=r.te_train,
        vae=r.vae_weights,
        gathered=_sampling_gathered(layout, c.distributed.fsdp_reshard_after_forward),
    )


def _overhead(config: TrainConfig, peak: float, num_processes: int) -> float:
    """What the process holds beyond its tensors: allocator slack, the CUDA context, NCCL's buffers."""
    return peak * allocator_slack(config) + CUDA_CONTEXT_GIB + (NCCL_GIB if num_processes > 1 else 0.0)


def estimate(config: TrainConfig, *, num_processes: int | None = None, kernels: str = "cuda") -> Estimate:
    """Peak GPU memory of one training process: per GPU. Data parallel (DDP): every process holds the
    whole model; FSDP (``distributed.strategy``): a 1/N shard of it and the units it gathers.

    ``num_processes``: the processes over all machines (default: the config's ``distributed``).
    ``kernels="cuda"`` uses the activation figures measured on a GPU; ``"trace"`` the CPU meta-tensor
    trace's own (what tests/memory compares against a fresh trace)."""
    num_processes = num_processes or config.distributed.world_size
    r = _run(config, num_processes, kernels)
    notes: list[str] = []
    if r.fsdp:
        notes.append(
            f"per GPU, on each of {num_processes} GPUs: FSDP shards the weights, LoRA, gradients and optimizer "
            "state; one block at a time is gathered whole"
        )
    elif num_processes > 1:
        notes.append(f"per process, on each of {num_processes} GPUs (DDP gradient buckets included)")
    if config.lora.type != "lora":
        # PEFT's LoKr/LoHa layers build each full delta weight (out × in) in every forward: counted in
        # training (memory/adapter_acts.py), not in the sampling forward's transient.
        notes.append(
            f"lora.type {config.lora.type}: parameters, gradients and optimizer state are exact; training "
            "counts the delta weights its layers build (within about 4% of the trace); sampling does not"
        )
    if config.memory.blocks_to_swap and r.fsdp:
        notes.append(
            "memory.blocks_to_swap is not counted under FSDP: the sharded blocks are gathered instead"
        )
    elif r.swap is not None:
        sw = r.swap
        notes.append(
            f"block swap: {sw.blocks} blocks' frozen weights ({sw.pinned / GIB:.1f} GiB) in pinned host memory, "
            f"two at a time on the GPU ({sw.buffers / GIB:.2f} GiB); {sw.copied / GIB:.1f} GiB copied per step"
        )
        if sw.blocks < config.memory.blocks_to_swap:
            notes.append(f"memory.blocks_to_swap counted as {sw.blocks}, this model's maximum")
    training, layout = _training(r)
    parts = {"caching": _part(**_caching(r)), "training": training}
    if config.validation.enabled:
        parts["sampling"] = _sampling(r, layout)
    phases = {k: _gib(v) for k, v in parts.items()}
    peak_phase = max(phases, key=lambda k: phases[k])
    peak = phases[peak_phase]
    overhead = _overhead(config, peak, num_processes)
    if peak_phase != "training":
        notes.append(f"the peak comes while {peak_phase}, not during the training steps")
    return Estimate(
        variant=r.shapes.variant,
        trainable_params=r.adapter.params,
        components={**parts[peak_phase], "overhead": overhead},
        phases=phases,
        peak_phase=peak_phase,
        allocated_peak_gib=peak,
        total_gib=peak + overhead,
        image_tokens=r.shapes.image_tokens,
        text_tokens=r.shapes.text_tokens,
        phase_components=parts,
        notes=notes,
        model=r.shapes.title,
        swap=_swap_dict(r.swap),
    )
