"""The embedded demo model: FLUX.2 [klein] architecture at toy size, built from config in code.

It is saved as an ordinary diffusers folder, so training loads it through exactly the same
``from_pretrained`` path as a real model. Its weights start random (fixed seed) and are then taught a
tiny world of coloured shapes (:mod:`flux2_lora.training.demo_pretrain`, seconds on a CPU), so that a
LoRA trained on it visibly learns something new. The tokenizer is a small byte-level BPE trained locally
on the demo vocabulary; nothing is downloaded.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from flux2_lora.data.demo import _COLORS, _SHAPES, DEMO_VERSION, TRIGGER, demo_model_dir
from flux2_lora.variants import VARIANTS

log = logging.getLogger("flux2_lora")

_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
# Qwen3's chat template, reduced to what the FLUX.2 [klein] pipeline uses (no tools, thinking off).
_CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)


def _corpus() -> list[str]:
    words = [f"a {c} {s} on stripes, {TRIGGER} style" for c in _COLORS for s in _SHAPES]
    words += ["a photo of a dog", "a painting of a house", "user", "assistant", "a cat in the snow"]
    return words * 20


def build_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer  # the fast (tokenizers) one in transformers 5

    vocab_size = VARIANTS["demo"].text_encoder.vocab_size
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    none: Any = None  # a byte-level BPE has no unknown or begin token; transformers types them as str
    wrapped = Qwen2Tokenizer(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=none,
        bos_token=none,
    )
    wrapped.chat_template = _CHAT_TEMPLATE
    return wrapped


def flux2_scheduler() -> Any:
    """FLUX.2's sampling scheduler as its pipelines ship it (dynamic, resolution-dependent shift)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from flux2_lora.timesteps import NUM_TRAIN_TIMESTEPS

    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        time_shift_type="exponential",
    )


def build_demo_pipeline(**transformer_overrides: object) -> Any:
    """The demo pipeline in memory, every component from the variant table, seeded.

    ``transformer_overrides`` change the transformer's config (e.g. a wider, deeper model for memory
    benchmarks on CPU); the text encoder's output width follows ``joint_attention_dim``."""
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    v = VARIANTS["demo"]
    te = v.text_encoder
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(**{**te.transformers_config(), "vocab_size": len(tokenizer)}, tie_word_embeddings=True)
    )
    # Token embeddings far above the layers' random contributions: every word keeps a distinct embedding
    # through the 28 random layers, so the base model can learn what "red" or "circle" means within
    # seconds (the usual 0.02 leaves them faint and alike).
    # The padding token embeds to zero: the pipelines pad every prompt to 512 tokens, and a zero query
    # attends evenly to the prompt's own tokens, so the padding carries the prompt's gist instead of
    # drowning its three words in 500 identical ones.
    with torch.no_grad():
        embed = text_encoder.model.embed_tokens.weight
        torch.nn.init.normal_(embed, std=0.5)
        embed[tokenizer.pad_token_id].zero_()
    vae = AutoencoderKLFlux2(
        block_out_channels=v.vae.block_out_channels,
        layers_per_block=1,
        latent_channels=v.vae.latent_channels,
        norm_num_groups=4,
        sample_size=v.vae.sample_size,
    )
    transformer = Flux2Transformer2DModel(**{**v.transformer.diffusers_config(), **transformer_overrides})
    scheduler = flux2_scheduler()
    return Flux2KleinPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )


def _only_safetensors(folder: Path) -> bool:
    """The folder's weights are all safetensors (loading them runs no pickle)."""
    pickled = [p for p in folder.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    return not pickled and any(folder.rglob("*.safetensors"))


def ensure_demo_model(
    target: Path | None = None, *, pretrain: bool | None = None, **transformer_overrides: object
) -> Path:
    """Build, teach (see :mod:`flux2_lora.training.demo_pretrain`) and save the demo pipeline once;
    concurrent callers (multi-process runs) wait for the first. The default folder is named by a hash
    of the code that builds it, so a change to that code builds a new one.

    ``pretrain``: None teaches the default model and leaves a resized one (``transformer_overrides``,
    for memory benchmarks) random."""
    folder = target or demo_model_dir()
    if pretrain is None:
        pretrain = not transformer_overrides
    if (folder / "model_index.json").is_file() and _only_safetensors(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock_path = folder.parent / f".{folder.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / "model_index.json").is_file() and _only_safetensors(folder):
            return folder
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            pipe = build_demo_pipeline(**transformer_overrides)
            if pretrain:
                from flux2_lora.training.demo_pretrain import pretrain as teach

                log.info(
                    "demo model: first use, teaching it its world of shapes (once; cached in %s)", folder
                )
                teach(pipe)
            pipe.save_pretrained(tmp, safe_serialization=True)
            (tmp / "DEMO_VERSION").write_text(f"{DEMO_VERSION}\n{folder.name}\n")
            if folder.exists():
                shutil.rmtree(folder)  # a damaged copy of our own cache folder (the lock is held)
            os.replace(tmp, folder)  # atomic: a half-built model is never seen
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return folder
