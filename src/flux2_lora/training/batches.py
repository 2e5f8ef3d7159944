"""Training inputs: the deterministic sample schedule, and encoded latents and prompt embeddings.

Which image a step sees, its flip, its noise and its timestep are pure functions of (seed, step,
micro-step, rank). Nothing depends on how many steps ran before in this process, so a resumed run
continues with exactly the data, noise and timesteps the uninterrupted run would have used.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flux2_lora.config import TrainConfig

_MIX = 0x9E3779B97F4A7C15


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix-style), stable across processes and Python versions."""
    h = 0
    for p in parts:
        h = (h ^ (p + _MIX + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class SampleSchedule:
    """Which (item, sample id) pairs each micro-batch trains on; a pure function of (seed, step).

    Square mode: a seeded permutation per epoch over every item × its repeats, read in order.
    Bucket mode: per epoch, each bucket's items (× repeats) are shuffled and cut into batches, and the
    batches are shuffled, so no batch mixes shapes (a bucket is any sortable key: an edit run's groups
    the target's shape with its references' shapes). The sample id seeds that sample's noise and flip.
    """

    def __init__(
        self,
        repeats: list[int],
        seed: int,
        batch_size: int = 1,
        buckets: list[Any] | None = None,
    ):
        self.expanded = [i for i, r in enumerate(repeats) for _ in range(r)]
        self.epoch_len = len(self.expanded)
        self.num_items = len(repeats)
        self.seed = seed
        self.batch_size = batch_size
        self.buckets = buckets
        self._perms: dict[int, list[int]] = {}
        self._batches: dict[int, list[list[int]]] = {}

    def item(self, global_index: int) -> int:
        epoch, pos = divmod(global_index, self.epoch_len)
        perm = self._perms.get(epoch)
        if perm is None:
            perm = list(self.expanded)
            random.Random(derive_seed(self.seed, 1, epoch)).shuffle(perm)
            self._perms = {epoch: perm}  # one epoch at a time is all a run needs
        return perm[pos]

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        cached = self._batches.get(epoch)
        if cached is not None:
            return cached
        assert self.buckets is not None
        rng = random.Random(derive_seed(self.seed, 10, epoch))
        by_bucket: dict[Any, list[int]] = {}
        for i in self.expanded:
            by_bucket.setdefault(self.buckets[i], []).append(i)
        batches: list[list[int]] = []
        for key in sorted(by_bucket):
            members = by_bucket[key]
            rng.shuffle(members)
            batches += [members[k : k + self.batch_size] for k in range(0, len(members), self.batch_size)]
        rng.shuffle(batches)
        self._batches = {epoch: batches}
        return batches

    def micro_batch(self, step: int, micro: int, rank: int, world: int, accum: int) -> list[tuple[int, int]]:
        """(item, sample id) of one micro-batch (step is 1-based)."""
        k = ((step - 1) * accum + micro) * world + rank
        if self.buckets is None:
            start = k * self.batch_size
            return [(self.item(g), g) for g in range(start, start + self.batch_size)]
        epoch_batches = self._epoch_batches(0)
        epoch, pos = divmod(k, len(epoch_batches))
        batch = self._epoch_batches(epoch)[pos]
        return [(item, k * self.batch_size + j) for j, item in enumerate(batch)]


def encode_images(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] (B,3,H,W) → FLUX.2's normalised, 2×2-patchified latents (B, 4C, H/16, W/16)."""
    from diffusers import Flux2Pipeline

    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    latents = Flux2Pipeline._patchify_latents(dist.mode())
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(
        latents.device, latents.dtype
    )
    return (latents - mean) / std


def pack(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, h, w) → packed tokens (B, h·w, C) and their (T, H, W, L) position ids."""
    from diffusers import Flux2Pipeline

    ids = Flux2Pipeline._prepare_latent_ids(latents).to(latents.device)
    return Flux2Pipeline._pack_latents(latents), ids


def reference_ids(shapes: list[tuple[int, int]]) -> torch.Tensor:
    """(T, H, W, L) ids of one sample's references, latent (h, w) each, in order: T = 10 + 10·i for
    reference i, H and W restart at 0 for every reference (no spatial offset), L = 0. Int64, as the
    target's ids."""
    parts = []
    for i, (h, w) in enumerate(shapes):
        rows = torch.arange(h).repeat_interleave(w)  # row-major, as the tokens are packed
        cols = torch.arange(w).repeat(h)
        t = torch.full_like(rows, 10 + 10 * i)
        parts.append(torch.stack([t, rows, cols, torch.zeros_like(rows)], dim=1))
    return torch.cat(parts, dim=0)


def pack_references(
    per_sample: list[list[torch.Tensor]], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The references of a batch's samples (each a list of (C, h, w) latents, the same shapes in every
    sample: batches are grouped by them) → tokens (B, N, C), appended after the target's tokens by the
    loss, and ids (B, N, 4), built for every sample anew so the time offsets restart per sample.
    None when the samples have no references (text-to-image)."""
    if not per_sample or not per_sample[0]:
        return None
    tokens, ids = [], []
    for refs in per_sample:
        moved = [r.to(device, non_blocking=True) for r in refs]
        tokens.append(torch.cat([r.flatten(1).transpose(0, 1) for r in moved], dim=0))
        ids.append(reference_ids([(r.shape[1], r.shape[2]) for r in refs]))
    return torch.stack(tokens).to(dtype), torch.stack(ids).to(device)


def text_ids_for(prompt_embeds: torch.Tensor) -> torch.Tensor:
    from diffusers import Flux2Pipeline

    return Flux2Pipeline._prepare_text_ids(prompt_embeds).to(prompt_embeds.device)


@dataclass
class Item:
    path: Path
    caption: str  # after the trigger word is applied
    repeats: int = 1
    bucket: tuple[int, int] | None = None
    variants: list[str] | None = None  # shuffled-tag orders, when dataset.shuffle_tags
    references: tuple[Path, ...] = ()  # an edit pair's inputs, in order; () for text-to-image
    reference_sizes: tuple[tuple[int, int], ...] = ()  # (width, height) each reference trains at
    mask: Path | None = None  # dataset.mask_path: this image's loss mask (training/masks.py)
    source: int = 0  # which dataset: 0 dataset.path, n dataset.extra[n-1] (data/entries.py)
    regularization: bool = False  # from an entry with role regularization (training.preservation)
    caption_dropout: float | None = None  # its dataset's caption_dropout (None: dataset.caption_dropout)

    @property
    def group(self) -> Hashable:
        """What a batch must share: the target's bucket and, for edit pairs, the references' sizes."""
        return (self.bucket or (0, 0), self.reference_sizes)

    def tokens(self, resolution: int) -> int:
        """The image tokens of this item's sample: target and references (what its step's size is)."""
        w, h = self.bucket or (resolution, resolution)
        return (w // 16) * (h // 16) + sum((rw // 16) * (rh // 16) for rw, rh in self.reference_sizes)


class LatentSource:
    """Latents per (item, flip): encoded once up front (cache_latents) or on demand each step."""

    def __init__(
        self, items: list[Item], config: TrainConfig, vae: Any, device: torch.device, *, pin: bool = False
    ):
        from flux2_lora.training.images import load_training_image

        self._load = load_training_image
        self.items = items
        self.config = config
        self.vae = vae
        self.device = device
        self.pin = pin  # page-locked cache: each step's copy to the GPU runs asynchronously
        self.cache: dict[tuple[int, bool], torch.Tensor] = {}
        # References are centre-cropped at a fixed size: encoded once per (item, flip) whether or not
        # the targets are cached (a step never re-encodes them).
        self.reference_cache: dict[tuple[int, bool], list[torch.Tensor]] = {}
        ds = config.dataset
        self.targets: list[int | tuple[int, int]] = [
            # A bucket, or a dataset.extra entry's own resolution (square); else dataset.resolution.
            i.bucket or ds.resolution
            for i in items
        ]

    def _pixels(self, item: int, flip: bool, crop_seed: int) -> torch.Tensor:
        ds = self.config.dataset
        return self._load(
            self.items[item].path,
            self.targets[item],
            center_crop=ds.center_crop,
            flip=flip,
            crop_rng=random.Random(crop_seed),
        )

    @torch.no_grad()
    def fill_cache(self, batch: int = 4) -> None:
        """Encode every item (both flips when random_flip); crops are fixed per item when cached."""
        flips = (False, True) if self.config.dataset.random_flip else (False,)
        keys = [(i, f) for i in range(len(self.items)) for f in flips]
        # Group by target shape so every VAE batch stacks.
        groups: dict[Any, list[tuple[int, bool]]] = {}
        for key in keys:
            groups.setdefault(self.targets[key[0]], []).append(key)
        chunks = [g[k : k + batch] for g in groups.values() for k in range(0, len(g), batch)]
        for chunk in chunks:
            pixels = torch.stack(
                [self._pixels(i, f, derive_seed(self.config.training.seed, 2, i)) for i, f in chunk]
            )
            latents = encode_images(self.vae, pixels).to("cpu")
            for key, lat in zip(chunk, latents):
                self.cache[key] = lat.clone().pin_memory() if self.pin else lat.clone()
        self.fill_references()

    @torch.no_grad()
    def fill_references(self) -> None:
        """Encode every item's references (both flips when random_flip: they mirror with the target)."""
        flips = (False, True) if self.config.dataset.random_flip else (False,)
        for i in range(len(self.items)):
            for f in flips:
                self.references(i, f)

    def _reference_pixels(self, item: int, k: int, flip: bool) -> torch.Tensor:
        it = self.items[item]
        return self._load(
            it.references[k],
            it.reference_sizes[k],
            center_crop=True,
            flip=flip,
            crop_rng=random.Random(0),  # unused: centre crops
        )

    @torch.no_grad()
    def references(self, item: int, flip: bool) -> list[torch.Tensor]:
        """The item's reference latents (C, h, w) each, in order, on the CPU ([] for text-to-image)."""
        key = (item, flip)
        cached = self.reference_cache.get(key)
        if cached is None:
            refs = self.items[item].references
            cached = []
            for k in range(len(refs)):
                pixels = self._reference_pixels(item, k, flip).unsqueeze(0)
                lat = encode_images(self.vae, pixels)[0].to("cpu")
                cached.append(lat.clone().pin_memory() if self.pin else lat.clone())
            self.reference_cache[key] = cached
        return cached

    @torch.no_grad()
    def get(self, item: int, flip: bool, sample_seed: int) -> torch.Tensor:
        if self.cache:
            return self.cache[(item, flip)]
        crop_seed = (
            derive_seed(self.config.training.seed, 2, item)
            if self.config.dataset.center_crop
            else sample_seed
        )
        pixels = self._pixels(item, flip, crop_seed).unsqueeze(0)
        return encode_images(self.vae, pixels)[0].to("cpu")


class PromptSource:
    """Prompt embeddings per caption: encoded once (cache_text_embeddings) or with the live encoder."""

    def __init__(
        self,
        pipe: Any,
        device: torch.device,
        max_sequence_length: int,
        text_encoder_out_layers: tuple[int, ...] | None = None,
        *,
        pin: bool = False,
    ):
        self.pipe = pipe
        self.device = device
        self.max_sequence_length = max_sequence_length
        self.pin = pin  # page-locked cache: each step's copy to the GPU runs asynchronously
        self.cache: dict[str, torch.Tensor] = {}
        # None: worked out from the loaded encoder, so an encoder shallower than the pipeline's default
        # layers (a small custom model) still encodes.
        self.out_layers = text_encoder_out_layers or auto_out_layers(pipe)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        embeds, _ = self.pipe.encode_prompt(
            prompt=prompts,
            device=self.device,
            max_sequence_length=self.max_sequence_length,
            text_encoder_out_layers=self.out_layers,
        )
        return embeds

    def fill_cache(self, prompts: list[str], batch: int = 8) -> None:
        unique = list(dict.fromkeys(prompts))
        for start in range(0, len(unique), batch):
            chunk = unique[start : start + batch]
            for p, e in zip(chunk, self.encode(chunk).to("cpu")):
                self.cache[p] = e.clone().pin_memory() if self.pin else e.clone()

    def get(self, prompts: list[str]) -> torch.Tensor:
        if all(p in self.cache for p in prompts):
            return torch.stack([self.cache[p] for p in prompts])
        return self.encode(prompts)

    def batch(self, prompts: list[str], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The embeddings of ``prompts`` on ``device``: cached ones copied without a host-side stack."""
        if all(p in self.cache for p in prompts):
            return to_device_stacked([self.cache[p] for p in prompts], device, dtype)
        return self.encode(prompts).to(device, dtype)


def to_device_stacked(tensors: list[torch.Tensor], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Stack on ``device``: each tensor's copy is asynchronous when it sits in page-locked memory."""
    moved = [t.to(device, non_blocking=True) for t in tensors]
    return torch.stack(moved).to(dtype)


def auto_out_layers(pipe: Any) -> tuple[int, ...]:
    """The pipeline's default text-encoder layers when its encoder has them, else as many layers as the
    transformer takes (read from the model folder, when local) spread over the encoder's depth."""
    import inspect

    from flux2_lora.variants import choose_text_encoder_layers, read_local_transformer_config

    default = tuple(inspect.signature(pipe.encode_prompt).parameters["text_encoder_out_layers"].default)
    cfg = pipe.text_encoder.config
    text = getattr(cfg, "text_config", None) or cfg
    depth, hidden = int(text.num_hidden_layers), int(text.hidden_size)
    count = None
    source = getattr(pipe, "name_or_path", None)
    if source and Path(source).is_dir():
        local = read_local_transformer_config(source)
        joint = local.get("joint_attention_dim") if local else None
        if isinstance(joint, int) and joint % hidden == 0:
            count = joint // hidden
    return choose_text_encoder_layers(default, depth, count)


def build_items(report: Any, root: Path, config: TrainConfig) -> list[Item]:
    """Training items from a dataset scan: trigger word applied, per-folder repeats ('10_name'), aspect
    bucket, and 8 fixed shuffled-tag orders per caption when dataset.shuffle_tags."""
    import logging
    import re

    from flux2_lora.data.buckets import bucket_for, bucket_table, format_table
    from flux2_lora.data.captions import apply_trigger, shuffle_tags, trigger_findings
    from flux2_lora.data.references import trained_sizes
    from flux2_lora.display import escape

    log = logging.getLogger("flux2_lora")
    ds = config.dataset
    for file, _, message in trigger_findings(
        [(escape(i.path.relative_to(root)), i.caption) for i in report.items], ds.trigger_word
    ):
        log.warning("dataset: %s%s", f"{file}: " if file else "", message)
    items = []
    for n, i in enumerate(report.items):
        caption = apply_trigger(i.caption, ds.trigger_word)
        parts = i.path.relative_to(root).parts
        match = re.match(r"^(\d+)_", parts[0]) if len(parts) > 1 else None
        item = Item(i.path, caption, repeats=int(match.group(1)) if match else 1)
        if i.references:
            item.references = i.references
            item.reference_sizes = trained_sizes(i.references, ds.reference_max_pixels)
        if ds.bucketing:
            item.bucket = bucket_for(i.width, i.height, ds.resolution, ds.bucket_step)
        if ds.shuffle_tags:
            item.variants = [
                shuffle_tags(caption, ds.keep_tags, random.Random(derive_seed(config.training.seed, 9, n, k)))
                for k in range(8)
            ]
        items.append(item)
    if ds.bucketing:
        sizes = ((i.width, i.height) for i in report.items)
        log.info(format_table(bucket_table(sizes, ds.resolution, ds.bucket_step)))
    return items
