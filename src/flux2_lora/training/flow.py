"""The FLUX.2 flow-matching objective, as diffusers' FLUX.2 training scripts define it.

noisy = (1 - σ)·x0 + σ·noise, the transformer predicts the velocity noise - x0, and the loss is the
(optionally σ-weighted) mean squared error in fp32. σ is drawn with diffusers' density schemes and
quantised to the scheduler's 1000 training sigmas; the transformer's ``timestep`` input is σ itself
(the scripts pass ``timesteps / 1000``).
"""

from __future__ import annotations

import math

import torch

from flux2_lora.config import TrainingSection
from flux2_lora.timesteps import NUM_TRAIN_TIMESTEPS, shift_sigma


def sample_density(
    scheme: str,
    batch_size: int,
    *,
    generator: torch.Generator,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    sigmoid_scale: float = 1.0,
) -> torch.Tensor:
    """u in [0, 1) per sample (diffusers' ``compute_density_for_timestep_sampling``, with an explicit
    generator; the same schemes as :mod:`flux2_lora.timesteps`)."""
    if scheme == "logit_normal":
        u = torch.normal(logit_mean, logit_std, size=(batch_size,), generator=generator)
        return torch.sigmoid(u)
    if scheme == "sigmoid":
        return torch.sigmoid(sigmoid_scale * torch.randn(batch_size, generator=generator))
    u = torch.rand(batch_size, generator=generator)
    if scheme == "mode":
        return 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    if scheme != "uniform":
        raise ValueError(f"training.timestep_sampling: unknown scheme {scheme!r}")
    return u


def training_sigmas(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """The unshifted training sigmas of FLUX.2's scheduler (dynamic shifting applies only at inference)."""
    return torch.linspace(1.0, 1.0 / num_train_timesteps, num_train_timesteps)


def sigmas_from_density(u: torch.Tensor, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """σ ≈ u on the scheduler's grid. diffusers indexes its descending timesteps with u, which makes a
    positive logit_mean mean *less* noise; we keep the SD3 paper's reading (positive mean: more noise)."""
    indices = ((1 - u) * num_train_timesteps).long().clamp(0, num_train_timesteps - 1)
    return training_sigmas(num_train_timesteps)[indices]


def draw_sigmas_and_noise(
    t: TrainingSection, seed: int, batch_size: int, shape: torch.Size, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A micro-batch's σ (B,) on the CPU and its noise ``shape`` on ``device``, from one seed.

    σ first, from a CPU generator, on every device: one seed trains on the same timesteps on CPU and GPU.
    The noise comes after, from the same generator on CPU, from a device generator seeded the same way on
    CUDA (a CPU draw and copy of a 1024² batch's noise costs milliseconds a step), so a resumed run gets
    the same noise on the same kind of device."""
    gen = torch.Generator().manual_seed(seed)
    u = sample_density(
        t.timestep_sampling,
        batch_size,
        generator=gen,
        logit_mean=t.logit_mean,
        logit_std=t.logit_std,
        mode_scale=t.mode_scale,
        sigmoid_scale=t.sigmoid_scale,
    )
    sigmas = shift_sigma(sigmas_from_density(u), t.timestep_shift, t.shift, shape[1])
    if device.type == "cuda":
        device_gen = torch.Generator(device).manual_seed(seed)
        return sigmas, torch.randn(shape, generator=device_gen, dtype=torch.float32, device=device)
    return sigmas, torch.randn(shape, generator=gen, dtype=torch.float32)


def loss_weights(scheme: str, sigmas: torch.Tensor) -> torch.Tensor:
    """diffusers' ``compute_loss_weighting_for_sd3``."""
    if scheme == "sigma_sqrt":
        return (sigmas**-2.0).float()
    if scheme == "cosmap":
        bot = 1 - 2 * sigmas + 2 * sigmas**2
        return (2 / (math.pi * bot)).float()
    return torch.ones_like(sigmas, dtype=torch.float32)


def flow_matching_loss(
    transformer: torch.nn.Module,
    *,
    latents: torch.Tensor,
    latent_ids: torch.Tensor,
    prompt_embeds: torch.Tensor,
    text_ids: torch.Tensor,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    guidance: torch.Tensor | None,
    weighting: str = "none",
    reference_latents: torch.Tensor | None = None,
    reference_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """One training loss. ``latents``/``noise``: packed (B, N, C); ``sigmas``: (B,).

    Edit samples: the references' clean tokens (B, M, C) and ids (B, M, 4) follow the noisy target's, as
    at inference; the sample's one timestep covers every token; the prediction is cut back to the N target
    tokens and the loss is taken there only."""
    dtype = prompt_embeds.dtype
    s = sigmas.to(latents.device, torch.float32).view(-1, 1, 1)
    noisy = ((1.0 - s) * latents.float() + s * noise.float()).to(dtype)
    ids = latent_ids
    if reference_latents is not None and reference_ids is not None:
        noisy = torch.cat([noisy, reference_latents.to(dtype)], dim=1)
        ids = torch.cat([latent_ids, reference_ids], dim=1)
    pred = transformer(
        hidden_states=noisy,
        encoder_hidden_states=prompt_embeds,
        timestep=sigmas.to(latents.device, dtype),
        img_ids=ids,
        txt_ids=text_ids,
        guidance=guidance,
        return_dict=False,
    )[0]
    pred = pred[:, : latents.shape[1]]
    target = noise.float() - latents.float()
    per_sample = ((pred.float() - target) ** 2).reshape(target.shape[0], -1).mean(dim=1)
    weights = loss_weights(weighting, sigmas.to(per_sample.device).float())
    return (weights * per_sample).mean()
