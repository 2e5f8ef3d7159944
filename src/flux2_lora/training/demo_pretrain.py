"""Teaching the embedded demo model its world before anyone trains a LoRA on it (CPU, seconds).

A LoRA on random weights learns nothing a newcomer can see: the samples stay noise. So the demo model is
first fully trained, briefly, on a tiny world: one coloured circle, square or triangle on a plain light
background, captioned "a red circle". The VAE is trained as a plain autoencoder on those pictures (plus
striped backgrounds in random colours, so it can draw a pattern it was never told about), its latent
statistics are set from them, and the transformer learns flow matching on their latents with the frozen
text encoder's embeddings, through the same encode/pack/loss code the trainer uses. The quickstart LoRA
then has something new to teach: "on stripes, sks style", warm diagonal stripes the base never saw.

Everything is seeded and single-threaded-deterministic for a given torch build; the result is cached by
:func:`flux2_lora.training.demo_model.ensure_demo_model`, keyed by this code (see ``demo_code_key``).
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import torch

from flux2_lora.data.demo import _COLORS, _SHAPES, draw_shape, stripes

log = logging.getLogger("flux2_lora")

WORLD_SIZE = 64  # the demo trains and samples at 64 px
WORLD_BACKGROUND = (236, 236, 240)  # a cool, plain light grey: the base world has no stripes
VAE_STEPS = 400
VAE_BATCH = 16
VAE_CROP = (
    32  # the VAE is convolutional: 32-px crops teach it as well as whole pictures, at a quarter the cost
)
TRANSFORMER_STEPS = 600
BATCH = 8
# Most steps see the captions padded to SHORT_TEXT tokens instead of the pipelines' 512 (a sixth of the
# cost: the image is only 16 tokens); the last FULL_TEXT_STEPS see the real padding, so the model learns to
# look past it. The text encoder is causal: the first tokens' embeddings are the same either way.
SHORT_TEXT = 64
FULL_TEXT_STEPS = 100
FULL_BATCH = 4
SEED = 1234


def world_caption(color: str, shape: str) -> str:
    return f"a {color} {shape}"


def world_image(rng: random.Random, color: str, shape: str, background: Any = None) -> Any:
    """One picture of the base world (or, with ``background``, one on that PIL image)."""
    from PIL import Image, ImageDraw

    size = WORLD_SIZE
    img = background.copy() if background is not None else Image.new("RGB", (size, size), WORLD_BACKGROUND)
    r = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    draw_shape(ImageDraw.Draw(img), shape, (cx - r, cy - r, cx + r, cy + r), _COLORS[color])
    return img


def _to_tensor(images: list[Any]) -> torch.Tensor:
    import numpy as np

    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images])  # (B, H, W, 3) in 0..255
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def _world_batch(rng: random.Random, n: int) -> tuple[torch.Tensor, list[str]]:
    images, captions = [], []
    for _ in range(n):
        color, shape = rng.choice(list(_COLORS)), rng.choice(_SHAPES)
        images.append(world_image(rng, color, shape))
        captions.append(world_caption(color, shape))
    return _to_tensor(images), captions


def _codec_batch(rng: random.Random, n: int) -> torch.Tensor:
    """What the VAE learns to reproduce: the world, and shapes on stripes of random colours."""
    images = []
    for i in range(n):
        color, shape = rng.choice(list(_COLORS)), rng.choice(_SHAPES)
        if i % 3 == 2:
            a = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
            b = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
            bg = stripes(WORLD_SIZE, a, b, period=rng.choice((8, 12, 16)))
            images.append(world_image(rng, color, shape, background=bg))
        else:
            images.append(world_image(rng, color, shape))
    return _to_tensor(images)


def _train_vae(vae: Any, rng: random.Random) -> None:
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=5e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=VAE_STEPS, pct_start=0.1)
    for _ in range(VAE_STEPS):
        x = _codec_batch(rng, VAE_BATCH)
        top, left = rng.randint(0, WORLD_SIZE - VAE_CROP), rng.randint(0, WORLD_SIZE - VAE_CROP)
        x = x[:, :, top : top + VAE_CROP, left : left + VAE_CROP]
        dist = vae.encode(x).latent_dist
        z = dist.mode()
        recon = vae.decode(z).sample
        # A small pull of the latents towards unit scale keeps them well conditioned for the transformer.
        loss = torch.nn.functional.mse_loss(recon, x) + 1e-4 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        log.debug("demo VAE step loss %.4f", float(loss))
    log.info("demo model: VAE reconstruction error %.4f", float(loss))
    vae.eval()
    vae.requires_grad_(False)


@torch.no_grad()
def _set_latent_stats(vae: Any, rng: random.Random) -> None:
    """The pipelines normalise patchified latents with ``vae.bn``'s running statistics: set them exactly."""
    from diffusers import Flux2Pipeline

    x, _ = _world_batch(rng, 128)
    z = Flux2Pipeline._patchify_latents(vae.encode(x).latent_dist.mode())
    vae.bn.running_mean.copy_(z.mean(dim=(0, 2, 3)))
    vae.bn.running_var.copy_(z.var(dim=(0, 2, 3)))


def _train_transformer(pipe: Any, rng: random.Random) -> None:
    from flux2_lora.training.batches import PromptSource, encode_images, pack, text_ids_for
    from flux2_lora.training.flow import flow_matching_loss, sample_density, sigmas_from_density
    from flux2_lora.variants import VARIANTS

    te = VARIANTS["demo"].text_encoder
    captions = [world_caption(c, s) for c in _COLORS for s in _SHAPES]
    prompts = PromptSource(pipe, torch.device("cpu"), te.max_sequence_length, te.out_layers)
    prompts.fill_cache(captions)
    transformer = pipe.transformer
    transformer.train()
    total = TRANSFORMER_STEPS + FULL_TEXT_STEPS
    opt = torch.optim.AdamW(transformer.parameters(), lr=4e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=total, pct_start=0.1)
    gen = torch.Generator().manual_seed(SEED)
    for step in range(total):
        full = step >= TRANSFORMER_STEPS
        batch = FULL_BATCH if full else BATCH
        x, chosen = _world_batch(rng, batch)
        with torch.no_grad():
            latents, ids = pack(encode_images(pipe.vae, x))
        embeds = prompts.get(chosen)
        if not full:
            embeds = embeds[:, :SHORT_TEXT]
        sigmas = sigmas_from_density(sample_density("logit_normal", batch, generator=gen))
        noise = torch.randn(latents.shape, generator=gen)
        loss = flow_matching_loss(
            transformer,
            latents=latents,
            latent_ids=ids,
            prompt_embeds=embeds,
            text_ids=text_ids_for(embeds),
            sigmas=sigmas,
            noise=noise,
            guidance=None,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        sched.step()
        log.debug("demo transformer step %d loss %.4f", step, float(loss))
    log.info("demo model: flow-matching loss %.4f", float(loss))
    transformer.eval()
    transformer.requires_grad_(False)


def pretrain(pipe: Any) -> Any:
    """Teach a freshly built demo pipeline its world (in place); returns it."""
    t0 = time.perf_counter()
    rng = random.Random(SEED)
    torch.manual_seed(SEED)
    pipe.text_encoder.requires_grad_(False)
    _train_vae(pipe.vae, rng)
    _set_latent_stats(pipe.vae, rng)
    _train_transformer(pipe, rng)
    log.info("demo model: taught its world in %.0fs", time.perf_counter() - t0)
    return pipe
