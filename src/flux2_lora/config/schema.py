"""The one typed training configuration (pydantic, closed; no torch).

Every field carries its bounds and help text here; the CLI (``--set``), the YAML presets and the web
UI's widgets are all derived from this schema. ``ui`` hints (range of the slider, step, whether a field
sits in an "advanced" accordion) live next to the field they describe.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from flux2_lora.targets import TARGET_SETS, TargetError, resolve_targets
from flux2_lora.variants import VARIANTS


def F(default: Any, help: str, *, ui: dict[str, Any] | None = None, **bounds: Any) -> Any:
    """A config field: default, help text shown everywhere, bounds, and optional UI hints."""
    extra: dict[str, Any] | None = {"ui": ui} if ui else None
    return Field(default, description=help, json_schema_extra=extra, **bounds)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1 for a number; 'rank: true' is a mistake, not a rank of 1.
        if isinstance(v, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if annotation in (int, float):
                kind = "a whole number" if annotation is int else "a number"
                raise ValueError(f"must be {kind} (got {str(v).lower()})")
        return v


DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class ModelSection(Section):
    """Which FLUX.2 model to train, and where."""

    path: str = F(
        "demo",
        "Hub id (e.g. black-forest-labs/FLUX.2-klein-base-4B), a local diffusers folder, or 'demo' for the "
        "embedded tiny model that runs on CPU.",
        min_length=1,
        max_length=4096,
    )
    variant: Literal["auto", "dev", "klein-4b", "klein-9b", "demo"] = F(
        "auto",
        "Model family. 'auto' reads the folder's transformer/config.json, else recognises the hub id.",
    )
    device: str = F(
        "auto",
        "Where to train: auto (CUDA when present, else CPU), cpu, cuda or cuda:N. Multi-GPU runs take one "
        "GPU per process.",
        ui={"choices": ["auto", "cpu", "cuda", "cuda:0", "cuda:1"]},
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = F(
        "auto",
        "Precision of the frozen weights. auto: bfloat16 on GPUs that support it, float16 on older GPUs, "
        "float32 on CPU. Mixed precision follows it.",
    )

    text_encoder_layers: list[int] = F(
        [],
        "Text-encoder hidden states stacked into each prompt embedding (diffusers' text_encoder_out_layers). "
        "Empty: automatic, the pipeline's default ([dev] 10, 20, 30; [klein] 9, 18, 27), or, for a smaller "
        "encoder (a custom model), as many layers as the transformer takes, spread over its depth.",
        max_length=16,
        ui={"advanced": True},
    )

    @field_validator("text_encoder_layers")
    @classmethod
    def _layers(cls, v: list[int]) -> list[int]:
        if any(not 0 <= k <= 1024 for k in v):
            raise ValueError("layer numbers must be between 0 (the embeddings) and the encoder's depth")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        v = v.strip()
        if not DEVICE_RE.match(v):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return v


MAX_EXTRA_DATASETS = 16
# Fields of earlier versions that dataset.extra replaced (config/io.py converts them, with a warning).
REPLACED_DATASET_KEYS = ("extra_paths", "extra_weights", "regularization_path", "regularization_weight")
CAPTION_EXTENSION_RE = re.compile(r"\.[A-Za-z0-9_]{1,16}")


class DatasetEntry(Section):
    """One more dataset of a run (dataset.extra): its own folder, weight and role; a setting left out
    (None) is the primary dataset section's."""

    path: str = F(
        ...,
        "A folder of images with same-named caption files, or a .zip of one.",
        min_length=1,
        max_length=4096,
    )
    role: Literal["train", "regularization"] = F(
        "train",
        "train: images of what the LoRA learns. regularization: preservation images of the class without "
        "your subject (no trigger word is added unless this entry sets one), drawn as batches of their own; "
        "with training.preservation prior_prediction the base model's own prediction is their target.",
    )
    weight: float = F(
        1.0,
        "Sampling weight against dataset.weight and the other entries' (a batch comes from dataset i with "
        "probability weight_i / the sum of the weights).",
        gt=0,
        le=1000,
    )
    repeats: int | None = F(
        None, "How many times each image appears per epoch (empty: dataset.repeats).", ge=1, le=1000
    )
    resolution: int | None = F(
        None,
        "This dataset's training resolution in pixels, a multiple of 16 (empty: dataset.resolution); the "
        "largest of a run's resolutions sizes the memory estimate.",
        ge=16,
        le=4096,
    )
    caption_extension: str | None = F(
        None, "Extension of this dataset's caption files (empty: dataset.caption_extension)."
    )
    default_caption: str | None = F(
        None,
        "Caption for this dataset's images without a caption file (empty: dataset.default_caption).",
        max_length=2000,
    )
    trigger_word: str | None = F(
        None,
        "Trigger word of this dataset's captions (empty: dataset.trigger_word for role train, none for role "
        "regularization; '' for none).",
        max_length=200,
    )
    caption_dropout: float | None = F(
        None,
        "Probability of training one of this dataset's samples with an empty caption (empty: "
        "dataset.caption_dropout).",
        ge=0.0,
        le=1.0,
    )
    mask_path: str = F(
        "",
        "Masked loss for this dataset: a folder of masks named like its images (a relative path is inside "
        "this entry's folder). Not inherited from dataset.mask_path, whose masks name other images. Empty: "
        "off.",
        max_length=4096,
    )

    @field_validator("repeats", "resolution", "caption_dropout", "weight", mode="before")
    @classmethod
    def _no_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError(f"must be a number (got {str(v).lower()})")
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a folder or .zip path")
        return v

    @field_validator("resolution")
    @classmethod
    def _multiple_of_16(cls, v: int | None) -> int | None:
        if v is not None and v % 16:
            lower, upper = v - v % 16, v - v % 16 + 16
            raise ValueError(f"must be a multiple of 16 (FLUX.2's token size); try {lower} or {upper}")
        return v

    @field_validator("caption_extension")
    @classmethod
    def _ext(cls, v: str | None) -> str | None:
        if v is not None and not CAPTION_EXTENSION_RE.fullmatch(v):
            raise ValueError("must look like .txt or .caption")
        return v


class DatasetSection(Section):
    """The captioned images to learn from."""

    path: str = F(
        "demo",
        "A folder of images with same-named caption files, a .zip of one, or 'demo' for the generated "
        "sample dataset.",
        min_length=1,
        max_length=4096,
    )
    resolution: int = F(
        1024,
        "Training resolution in pixels (square side). A multiple of 16: FLUX.2 turns each 16×16 pixel "
        "patch into one token, so tokens = (resolution/16)².",
        ge=16,
        le=4096,
        ui={"choices": [512, 768, 1024, 1536, 2048], "custom": True},
    )
    center_crop: bool = F(
        True, "Crop the center after resizing the short side; off crops at a random (seeded) position."
    )
    random_flip: bool = F(
        False, "Mirror images left-right at random (seeded). Avoid for text or asymmetric subjects."
    )
    caption_extension: str = F(
        ".txt",
        "Extension of the caption file next to each image (photo.jpg → photo.txt).",
        ui={"advanced": True},
    )
    default_caption: str = F(
        "",
        "Caption for images without a caption file, usually your trigger word (e.g. 'a photo of sks person').",
        max_length=2000,
    )
    repeats: int = F(
        1,
        "How many times each image appears per epoch. A subfolder named like '10_faces' multiplies its own "
        "images' repeats by 10 (kohya's convention), to balance several concepts.",
        ge=1,
        le=1000,
        ui={"advanced": True},
    )
    bucketing: bool = F(
        False,
        "Aspect-ratio buckets: train each image at about resolution² pixels in its own shape (multiples of "
        "bucket_step) instead of a square crop; each batch comes from one bucket.",
    )
    bucket_step: int = F(
        64,
        "Side granularity of aspect buckets in pixels (multiple of 16); the most ever cropped per side.",
        ge=16,
        le=256,
        ui={"advanced": True, "step": 16},
    )
    trigger_word: str = F(
        "",
        "Word that calls the LoRA (e.g. 'sks'). Replaces a [trigger] placeholder in captions, else is prefixed "
        "to captions that lack it.",
        max_length=200,
    )
    caption_dropout: float = F(
        0.0,
        "Probability of training a sample with an empty caption (the LoRA then also works unprompted).",
        ge=0.0,
        le=1.0,
        ui={"advanced": True, "step": 0.05},
    )
    shuffle_tags: bool = F(
        False,
        "Shuffle comma-separated tags in each caption (8 fixed orders per caption, one drawn per step).",
        ui={"advanced": True},
    )
    keep_tags: int = F(
        1,
        "When shuffling, keep the first N tags in place (usually the trigger).",
        ge=0,
        le=100,
        ui={"advanced": True},
    )
    reference_path: str = F(
        "",
        "Edit LoRAs: a folder of reference (input) images paired with the targets by file stem — x.png for "
        "one reference, x_0.png, x_1.png, … for several, in order; a relative path is inside the dataset "
        "folder (so a .zip carries it). The caption is the instruction. Empty: text-to-image, unless the "
        "dataset's metadata.jsonl lists 'references'.",
        max_length=4096,
    )
    reference_max_pixels: int = F(
        0,
        "Largest reference size in pixels (area; kept a multiple of 16 per side). 0 follows FLUX.2's own caps: "
        "2024² for a single reference, 1024² each when there are several.",
        ge=0,
        le=4096 * 4096,
        ui={"advanced": True},
    )

    mask_path: str = F(
        "",
        "Masked loss: a folder of mask images named like the images (photo.jpg → photo.png, any image type; "
        "ai-toolkit's and OneTrainer's convention of one grayscale mask per image): white trains, black is "
        "ignored, grey weighs in between. The mask is cropped, flipped and bucketed with its image and "
        "averaged over each 16×16 patch (one token). A relative path is inside the dataset folder. Empty: off.",
        max_length=4096,
    )
    unmasked_weight: float = F(
        0.0,
        "Masked loss: the loss weight of a fully black mask region (0 ignores it; 0.1 still learns a little "
        "of the background).",
        ge=0.0,
        le=1.0,
        ui={"advanced": True, "step": 0.05},
    )
    weight: float = F(
        1.0,
        "Several datasets: this dataset's sampling weight against each dataset.extra entry's weight (a batch "
        "comes from dataset i with probability weight_i / the sum of the weights).",
        gt=0,
        le=1000,
        ui={"advanced": True},
    )
    extra: list[DatasetEntry] = F(
        [],
        "Several datasets: more dataset folders (or .zip files) trained in the same run, each a mapping with "
        "its own path, weight, role (train or regularization) and, optionally, repeats, resolution, "
        "caption_extension, default_caption, trigger_word, caption_dropout and mask_path; a setting left out "
        "is this section's. Every batch comes from one dataset and one bucket. YAML, e.g. "
        "[{path: more_photos, weight: 3}, {path: class_images, role: regularization}].",
        max_length=MAX_EXTRA_DATASETS,
        ui={"advanced": True, "lines": 4, "yaml": True},
    )

    @model_validator(mode="before")
    @classmethod
    def _replaced_keys(cls, data: Any) -> Any:
        # validate_dict converts these with a warning; a config built directly names the new field.
        if isinstance(data, dict):
            old = [k for k in REPLACED_DATASET_KEYS if k in data]
            if old:
                raise ValueError(
                    f"{', '.join(old)} {'was' if len(old) == 1 else 'were'} replaced by dataset.extra, a list "
                    "of entries ({path: …, weight: …, role: train|regularization}); load the file through "
                    "flux2-lora (it converts them) or write the entries"
                )
        return data

    @field_validator("resolution")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        if v % 16:
            lower, upper = v - v % 16, v - v % 16 + 16
            raise ValueError(f"must be a multiple of 16 (FLUX.2's token size); try {lower} or {upper}")
        return v

    @field_validator("bucket_step")
    @classmethod
    def _step_16(cls, v: int) -> int:
        if v % 16:
            raise ValueError("must be a multiple of 16 (FLUX.2's token size)")
        return v

    @field_validator("caption_extension")
    @classmethod
    def _ext(cls, v: str) -> str:
        if not CAPTION_EXTENSION_RE.fullmatch(v):
            raise ValueError("must look like .txt or .caption")
        return v


class LoraSection(Section):
    """The adapter that is trained (everything else stays frozen)."""

    type: Literal["lora", "lokr", "loha"] = F(
        "lora",
        "Adapter kind, through PEFT's tuners. lora: ΔW = B·A (rank × (in + out) per layer). lokr: LyCORIS' "
        "Kronecker product ΔW = W1 ⊗ W2 (far fewer parameters; lora.rank factors W2, lokr_factor sets the "
        "split). loha: LyCORIS' Hadamard product of two rank-r products ((B1·A1) ⊙ (B2·A2)). The LoRA file "
        "keeps PEFT's key names; output.export_comfyui also writes ComfyUI's LyCORIS keys (lokr_w1…, hada_w1_a…).",
    )
    rank: int = F(
        16,
        "LoRA rank: capacity of the adapter. 16–32 suits a character or object, 32–64 a style. Memory and "
        "file size grow linearly.",
        ge=1,
        le=1024,
        ui={"min": 4, "max": 128, "step": 4},
    )
    alpha: float = F(
        16.0,
        "LoRA alpha: updates are scaled by alpha/rank. Usually equal to the rank.",
        gt=0,
        le=4096,
        ui={"min": 4, "max": 128, "step": 4},
    )
    dropout: float = F(
        0.0,
        "Dropout on the LoRA input, a regulariser for small datasets.",
        ge=0.0,
        le=0.9,
        ui={"max": 0.5, "step": 0.05},
    )
    use_dora: bool = F(
        False,
        "DoRA (weight-decomposed LoRA): adds a magnitude vector per layer; often better quality, slower steps.",
        ui={"advanced": True},
    )
    lokr_factor: int = F(
        0,
        "LoKr: each layer's input and output sizes are split into two factors (W1 takes the smaller one); "
        "this is the smaller factor's size when it divides the dimension (e.g. 4, 8, 16: a smaller W1, a "
        "larger W2), else the split nearest to it. 0: the split nearest the square root (PEFT's and "
        "LyCORIS' default, -1).",
        ge=0,
        le=4096,
        ui={"advanced": True},
    )
    lokr_decompose_both: bool = F(
        False,
        "LoKr: factor W1 into two rank-r matrices too (as W2 always is when the rank is below half its "
        "size); only matters with a large lokr_factor.",
        ui={"advanced": True},
    )
    target_modules: list[str] = F(
        ["default"],
        "Layers that get an adapter: named sets ("
        + ", ".join(TARGET_SETS)
        + ") and/or module names (attn.to_q, attn.to_out.0, attn.to_qkv_mlp_proj, ff.linear_in, …) or globs.",
        min_length=1,
        ui={"advanced": True, "choices": list(TARGET_SETS)},
    )

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        tokens = [t.strip() for t in v if t.strip()]
        if not tokens:
            raise ValueError("needs at least one named set or module name")
        try:  # module names are the same in every variant; the demo's tree has each kind
            resolve_targets(tokens, VARIANTS["demo"].transformer)
        except TargetError as e:
            raise ValueError(str(e)) from None
        return tokens


class TrainingSection(Section):
    """The optimisation itself."""

    learning_rate: float = F(
        1e-4,
        "Peak learning rate. 5e-5–2e-4 for AdamW; around 1.0 for Prodigy.",
        gt=0,
        le=10,
        ui={"min": 1e-6, "max": 1e-2, "log": True},
    )
    max_steps: int = F(
        1000, "Optimizer steps to train.", ge=1, le=1_000_000, ui={"min": 100, "max": 20000, "step": 100}
    )
    batch_size: int = F(
        1,
        "Images per step per GPU. Memory grows with it; use gradient accumulation instead.",
        ge=1,
        le=64,
        ui={"max": 16},
    )
    gradient_accumulation_steps: int = F(
        1,
        "Micro-batches summed before each optimizer step (effective batch = batch × this × GPUs).",
        ge=1,
        le=1024,
        ui={"max": 16},
    )
    optimizer: Literal["adamw", "adam", "sgd", "adafactor", "adamw8bit", "prodigy"] = F(
        "adamw",
        "adamw: the standard. adamw8bit: 8-bit state (bitsandbytes). prodigy: learning-rate free (prodigyopt). "
        "adafactor: factored second moment, smallest state. sgd: no state without momentum.",
    )
    weight_decay: float = F(
        1e-4, "Decoupled weight decay (AdamW, Prodigy) or L2 (others).", ge=0, le=1, ui={"advanced": True}
    )
    adam_beta1: float = F(
        0.9, "First-moment decay of Adam-type optimizers.", ge=0, lt=1, ui={"advanced": True}
    )
    adam_beta2: float = F(
        0.999, "Second-moment decay of Adam-type optimizers.", ge=0, lt=1, ui={"advanced": True}
    )
    adam_epsilon: float = F(1e-8, "Adam-type denominator epsilon.", gt=0, le=1e-2, ui={"advanced": True})
    momentum: float = F(0.0, "SGD momentum (0 keeps no optimizer state).", ge=0, lt=1, ui={"advanced": True})
    lr_scheduler: Literal["constant", "cosine", "linear", "polynomial"] = F(
        "constant", "Learning-rate schedule after warmup."
    )
    warmup_steps: int = F(0, "Steps of linear warmup from 0 to the learning rate.", ge=0, le=1_000_000)
    max_grad_norm: float = F(
        1.0, "Clip the gradient norm to this (0 disables clipping).", ge=0, le=1e4, ui={"advanced": True}
    )
    seed: int = F(
        42,
        "Seed for data order, noise and timesteps: same config + seed gives the same LoRA.",
        ge=0,
        le=2**32 - 1,
    )
    timestep_sampling: Literal["uniform", "logit_normal", "sigmoid", "mode"] = F(
        "uniform",
        "How training noise levels σ are drawn: uniform; logit_normal (SD3: more mid-range noise, a positive "
        "logit_mean means more noise); sigmoid (sigmoid of a scaled normal, as x-flux/ai-toolkit); mode (SD3).",
        ui={"advanced": True},
    )
    logit_mean: float = F(0.0, "Mean of logit-normal timestep sampling.", ge=-5, le=5, ui={"advanced": True})
    logit_std: float = F(1.0, "Std of logit-normal timestep sampling.", gt=0, le=5, ui={"advanced": True})
    sigmoid_scale: float = F(
        1.0,
        "Scale of the normal inside 'sigmoid' timestep sampling (larger: more extremes).",
        gt=0,
        le=10,
        ui={"advanced": True},
    )
    mode_scale: float = F(1.29, "Scale of 'mode' timestep sampling.", ge=-1, le=5, ui={"advanced": True})
    timestep_shift: Literal["none", "fixed", "resolution"] = F(
        "none",
        "Shift the drawn σ toward more noise: fixed (σ' = sσ/(1+(s−1)σ) with training.shift) or resolution "
        "(FLUX.2's scheduler shift, stronger for more image tokens).",
        ui={"advanced": True},
    )
    shift: float = F(3.0, "Shift s of timestep_shift=fixed.", ge=0.1, le=20, ui={"advanced": True})
    loss_weighting: Literal["none", "sigma_sqrt", "cosmap"] = F(
        "none", "Per-timestep weight of the loss (SD3 schemes).", ui={"advanced": True}
    )
    guidance_scale: float = F(
        1.0,
        "FLUX.2 [dev] only: the distilled-guidance value fed to the transformer while training "
        "(diffusers' README uses 1; its script defaults to 3.5). Ignored by [klein].",
        ge=0,
        le=20,
        ui={"advanced": True},
    )
    preservation: Literal["none", "prior_prediction"] = F(
        "none",
        "What regularization batches (dataset.extra entries with role regularization) learn: none trains them like any image "
        "(DreamBooth's prior preservation); prior_prediction uses the base model's prediction (LoRA off) on "
        "them as the target (OneTrainer's PRIOR_PREDICTION, ai-toolkit's output preservation), so the LoRA "
        "learns to leave those prompts alone.",
    )
    preservation_weight: float = F(
        1.0,
        "The loss weight of regularization batches (their loss is multiplied by it).",
        ge=0,
        le=100,
        ui={"advanced": True, "step": 0.1},
    )
    ema_decay: float = F(
        0.0,
        "Keep an exponential moving average (EMA) of the LoRA weights, saved beside the LoRA as "
        "pytorch_lora_weights_ema.safetensors: each update keeps this share of the average (0.99 averages "
        "about the last 100 updates, 0.999 about 1000). 0: off.",
        ge=0,
        lt=1,
        ui={"advanced": True, "max": 0.9999, "step": 0.001},
    )
    ema_update_every: int = F(
        1,
        "Optimizer steps between EMA updates (the average then spans ema_update_every / (1 − ema_decay) "
        "steps).",
        ge=1,
        le=10_000,
        ui={"advanced": True, "max": 100},
    )
    ema_device: Literal["gpu", "cpu"] = F(
        "gpu",
        "Where the EMA copy lives: gpu (the training device; 4 bytes per LoRA parameter of GPU memory) or "
        "cpu (host RAM instead, with a copy over PCIe at each update).",
        ui={"advanced": True},
    )


class MemorySection(Section):
    """Trade speed for GPU memory."""

    gradient_checkpointing: bool = F(
        True,
        "Recompute each block's activations during backward instead of storing them: far less memory for "
        "about 30% more time. Needed for FLUX.2 [dev] on one GPU.",
    )
    attention_slicing: bool = F(
        False,
        "Not available for FLUX.2: its attention runs through PyTorch SDPA / flash kernels whose memory is "
        "already linear in sequence length, so slicing would save nothing (diffusers' FLUX.2 has no "
        "set_attention_slice). Use gradient checkpointing or quantization.",
        ui={"disabled": True},
    )
    vae_slicing: bool = F(False, "Encode/decode one image at a time in the VAE (batch > 1).")
    vae_tiling: bool = F(
        False,
        "Encode/decode in overlapping tiles above the VAE's tile size (1024 px for FLUX.2): for large images.",
    )
    quantization: Literal["none", "fp8", "int8", "nf4"] = F(
        "none",
        "Store the frozen transformer's weights smaller. fp8: float8 (e4m3) with per-row scales, computed "
        "in bf16 on any GPU — half of bf16, closer to it than nf4; nf4: bitsandbytes 4-bit (~4.1 bits/weight, "
        "QLoRA); int8: torchao int8 weight-only. nf4/int8 need the 'quantization' extra.",
    )
    blocks_to_swap: int = F(
        0,
        "Keep the frozen weights of this many transformer blocks in pinned host memory and copy each to the "
        "GPU just ahead of use (block swap): less GPU memory for more host RAM and PCIe transfer time. 0: off.",
        ge=0,
        le=64,
    )
    text_encoder_quantization: Literal["none", "int8", "nf4"] = F(
        "none",
        "Load the text encoder quantized straight from its files (bitsandbytes; never in bf16 on the GPU "
        "first): [dev]'s 24B Mistral encoder is 44.7 GiB in bf16, ~13 GiB in nf4. Needs the 'quantization' "
        "extra.",
    )
    cpu_offload: bool = F(
        False,
        "Keep the text encoder on the CPU (it encodes the captions there: slow for [dev]'s 24B encoder, but it "
        "needs no GPU memory) and move the VAE to the GPU only while it runs. Needs host RAM for the encoder.",
    )
    cache_latents: bool = F(
        True, "Encode every image with the VAE once before training, then free the VAE from the GPU."
    )
    cache_text_embeddings: bool = F(
        True,
        "Encode every caption once before training and free the text encoder (24B for [dev]). Off keeps the "
        "encoder loaded and encodes each batch.",
    )
    cache_to_disk: bool = F(
        False,
        "Write the cached latents and text embeddings under the run (<run>/.cache, safetensors keyed by "
        "each file's content and the encoding settings) and read them back from there: a resumed run does not "
        "encode again, and the latents are read per step instead of held in RAM.",
        ui={"advanced": True},
    )

    @field_validator("attention_slicing")
    @classmethod
    def _no_slicing(cls, v: bool) -> bool:
        if v:
            raise ValueError(
                "is not available for FLUX.2: attention already runs in memory-efficient SDPA kernels, so "
                "slicing would save nothing; use memory.gradient_checkpointing or memory.quantization"
            )
        return v


class PerformanceSection(Section):
    """Make each step faster without changing what is trained."""

    compile: bool = F(
        False,
        "Compile the transformer's repeated blocks with torch.compile (regional compilation): 1.47× the "
        "steps/s on an H200 ([klein] 4B, 1024², bf16; also with NF4) after a one-time compile of about "
        "25 s; each new bucket shape compiles once more.",
    )
    attention_backend: Literal["auto", "flash", "efficient", "math"] = F(
        "auto",
        "Attention kernel. auto: PyTorch chooses per call (the fastest on an H200); flash or efficient: "
        "force that SDPA kernel (22% and 43% slower per step there); math: the slow reference kernel. "
        "cuDNN attention is not offered: forced, it crashed at [klein] 4B size (torch 2.11).",
        ui={"advanced": True},
    )
    float8: bool = F(
        False,
        "Run the frozen base layers' matrix products in FP8 (torchao float8 training) on GPUs with FP8 "
        "units (H100/H200, Ada, Blackwell): with compile, 1.65× the steps/s of diffusers' script on an "
        "H200, at the same memory. Weights stay in model.dtype, so it does not combine with memory.quantization "
        "(fp8 there is storage: float8 weights computed in model.dtype; choose speed here or memory there).",
        ui={"advanced": True},
    )
    cpu_threads: int = F(
        0,
        "CPU training: threads per process. 0: OMP_NUM_THREADS when set, else the cores this process may "
        "use divided among the training processes.",
        ge=0,
        le=1024,
        ui={"advanced": True},
    )


HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:]{2,45}\]?$")


class DistributedSection(Section):
    """Several GPUs or machines, launched through accelerate: every GPU runs one training process."""

    strategy: Literal["ddp", "fsdp"] = F(
        "ddp",
        "ddp: every GPU holds the whole model and the gradients are averaged (fastest when the model fits "
        "one GPU). fsdp: PyTorch FSDP2 shards the frozen weights, the LoRA, its gradients and optimizer "
        "state over all GPUs and gathers one transformer block at a time: FLUX.2 [dev] in bf16 then fits "
        "GPUs smaller than its 60 GiB of weights.",
    )
    num_processes: int = F(
        1,
        "Training processes on each machine, one per GPU (on CPU: processes). More than 1 launches them "
        "through accelerate; the GPU count is this × num_machines.",
        ge=1,
        le=64,
        ui={"max": 8},
    )
    num_machines: int = F(
        1,
        "Machines taking part. Start the same command on each with its own machine_rank; all of them "
        "need the dataset, only machine 0 writes the run directory.",
        ge=1,
        le=1024,
        ui={"advanced": True, "max": 16},
    )
    machine_rank: int = F(
        0,
        "This machine's number, 0 to num_machines − 1. Machine 0 writes the run directory.",
        ge=0,
        le=1023,
        ui={"advanced": True, "max": 16},
    )
    main_process_ip: str = F(
        "",
        "Address of machine 0 that the others connect to (a host name or an IP). Needed with more than "
        "one machine; empty on one machine.",
        max_length=253,
        ui={"advanced": True},
    )
    main_process_port: int = F(
        0,
        "TCP port on machine 0 for the rendezvous. 0: a free port on one machine, 29500 across machines.",
        ge=0,
        le=65535,
        ui={"advanced": True},
    )
    fsdp_reshard_after_forward: bool = F(
        True,
        "FSDP: free each block's gathered weights after its forward pass and gather them again for "
        "backward (least memory). Off keeps them until backward: fewer transfers, about the whole "
        "model's weights per GPU again.",
        ui={"advanced": True},
    )
    fsdp_cpu_offload: bool = F(
        False,
        "FSDP: keep the sharded weights, the LoRA, its gradients and optimizer state in host RAM; each "
        "block is copied to the GPU only while it runs (least GPU memory, slower steps, and the optimizer "
        "steps on the CPU).",
        ui={"advanced": True},
    )

    @field_validator("main_process_ip")
    @classmethod
    def _host(cls, v: str) -> str:
        v = v.strip()
        if v and not HOST_RE.match(v):
            raise ValueError("must be a host name or an IP address (e.g. 10.0.0.1)")
        return v

    @property
    def world_size(self) -> int:
        """Training processes over all machines (GPUs, or CPU processes)."""
        return self.num_processes * self.num_machines

    @property
    def sharded(self) -> bool:
        """FSDP over more than one process (with one, nothing is sharded)."""
        return self.strategy == "fsdp" and self.world_size > 1


class ValidationSection(Section):
    """Sample images during training to watch the LoRA learn."""

    enabled: bool = F(True, "Generate validation samples during and at the end of training.")
    every_n_steps: int = F(250, "Steps between validation samples.", ge=1, le=1_000_000)
    num_samples: int = F(1, "Images per prompt at each validation.", ge=1, le=16)
    prompts: list[str] = F(
        [], "Validation prompts, one per line. Empty: the first caption of the dataset.", max_length=32
    )
    references: list[list[str]] = F(
        [],
        "Edit LoRAs: the reference image paths for each validation prompt, in the prompts' order (one list "
        "per prompt), so samples are edits of fixed inputs. Empty: the first pair's references.",
        max_length=32,
    )
    num_inference_steps: int = F(28, "Denoising steps per sample.", ge=1, le=200)
    guidance_scale: float = F(
        4.0, "Guidance scale for samples ([dev]: distilled guidance; [klein]: CFG).", ge=0, le=30
    )
    sample_ema: bool = F(
        False,
        "Draw the validation samples from the EMA weights (training.ema_decay > 0) instead of the live LoRA.",
    )
    eval_images: int = F(
        0,
        "Held-out images for an eval loss (0: off): set aside from the dataset, never trained on, and "
        "scored at fixed noise levels with fixed noise, so runs on the same dataset with the same eval "
        "settings get comparable numbers.",
        ge=0,
        le=1000,
    )
    eval_folder: str = F(
        "",
        "A separate folder of captioned images to score instead of held-out ones (empty: eval_images).",
        max_length=4096,
        ui={"advanced": True},
    )
    eval_every: int = F(
        100,
        "Steps between eval-loss evaluations (also before the first step and at the end).",
        ge=1,
        le=1_000_000,
    )
    eval_sigmas: list[float] = F(
        [0.1, 0.3, 0.5, 0.7, 0.9],
        "Noise levels σ at which each eval image is scored, each with its own fixed noise.",
        min_length=1,
        max_length=32,
        ui={"advanced": True},
    )
    eval_seed: int = F(
        0,
        "Seed of the held-out choice and of the eval noise: keep it when comparing runs.",
        ge=0,
        le=2**32 - 1,
        ui={"advanced": True},
    )

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, v: list[str]) -> list[str]:
        return [p.strip() for p in v if p.strip()]

    @field_validator("eval_sigmas")
    @classmethod
    def _sigmas(cls, v: list[float]) -> list[float]:
        if any(not 0.0 < s <= 1.0 for s in v):
            raise ValueError("every σ must be in (0, 1]")
        return v

    @property
    def eval_enabled(self) -> bool:
        return self.eval_images > 0 or bool(self.eval_folder.strip())


class OutputSection(Section):
    """Where the run directory goes and what it keeps."""

    dir: str = F(
        "runs/default",
        "Run directory: config, metrics, samples, checkpoints and the final LoRA. One live run per directory.",
        min_length=1,
        max_length=4096,
    )
    checkpoint_every: int = F(250, "Steps between checkpoints (0: only at the end).", ge=0, le=1_000_000)
    max_checkpoints: int = F(2, "Keep only the newest K checkpoints.", ge=1, le=1000)
    save_optimizer_state: bool = F(
        True, "Store optimizer state in checkpoints so a resume continues exactly (larger checkpoints)."
    )
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = F(
        "auto",
        "Precision of the saved LoRA file. auto: the training weight precision.",
        ui={"advanced": True},
    )
    export_comfyui: bool = F(
        False, "Also write the LoRA with ComfyUI's key names (pytorch_lora_weights_comfyui.safetensors)."
    )

    @field_validator("dir")
    @classmethod
    def _own_folder(cls, v: str) -> str:
        # A run writes its files there and moves an earlier run's outputs to previous/: never a whole disk
        # or a home folder.
        try:
            p = Path(v.strip()).expanduser().resolve()
            home = Path.home().resolve()
        except (OSError, RuntimeError):  # no home folder known, or a path that cannot be resolved
            return v
        if p == Path(p.anchor):
            raise ValueError(
                f"is the filesystem root ({p}); give the run a folder of its own, e.g. runs/my-lora"
            )
        if p == home:
            raise ValueError(
                f"is your home folder itself ({p}); give the run a folder of its own, e.g. ~/runs/my-lora"
            )
        return v


class LoggingSection(Section):
    """Where metrics go. metrics.jsonl in the run directory is always written."""

    tensorboard: bool = F(True, "Write TensorBoard scalars and sample images to <run>/tensorboard.")
    wandb: bool = F(
        False, "Log to Weights & Biases (offline when no API key is set). Needs the 'wandb' extra."
    )
    wandb_project: str = F("flux2-lora", "W&B project name.", min_length=1, max_length=128)
    log_every: int = F(10, "Steps between metric log lines.", ge=1, le=100_000)


class TrainConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection)
    dataset: DatasetSection = Field(default_factory=DatasetSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    memory: MemorySection = Field(default_factory=MemorySection)
    performance: PerformanceSection = Field(default_factory=PerformanceSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    output: OutputSection = Field(default_factory=OutputSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> TrainConfig:
        from flux2_lora.config.rules import config_rules

        problems = config_rules(self)
        if problems:
            raise ValueError("; ".join(f"{f}: {m}" for f, m in problems))
        return self


SECTIONS: dict[str, type[Section]] = {
    name: cast("type[Section]", info.annotation) for name, info in TrainConfig.model_fields.items()
}

# Mixed precision (accelerate's autocast setting) is not a field: it follows model.dtype, here only.
DTYPE_TO_MIXED = {"bfloat16": "bf16", "float16": "fp16", "float32": "no"}


def mixed_precision(dtype: str) -> str:
    """The mixed precision a model.dtype implies; for 'auto', how the device will decide it."""
    if dtype in DTYPE_TO_MIXED:
        return DTYPE_TO_MIXED[dtype]
    return "auto: bf16 on GPUs with bfloat16, fp16 on older GPUs, no on CPU"
