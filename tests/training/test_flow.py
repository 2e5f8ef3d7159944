"""The flow-matching objective and its timestep sampling."""

from __future__ import annotations

import math
from typing import Any

import torch

from flux2_lora.training.flow import (
    flow_matching_loss,
    loss_weights,
    sample_density,
    sigmas_from_density,
    training_sigmas,
)


def _draw(scheme: str, n: int = 20000, **kw: float) -> torch.Tensor:
    return sample_density(scheme, n, generator=torch.Generator().manual_seed(0), **kw)


def test_uniform_logit_normal_and_mode_differ_as_specified() -> None:
    uni = _draw("uniform")
    assert abs(uni.mean().item() - 0.5) < 0.01 and abs(uni.std().item() - math.sqrt(1 / 12)) < 0.01
    ln = _draw("logit_normal", logit_mean=0.0, logit_std=1.0)
    assert ln.std() < uni.std() * 0.8  # concentrated in the middle
    shifted = _draw("logit_normal", logit_mean=1.0, logit_std=1.0)
    assert shifted.mean() > ln.mean() + 0.1
    mode = _draw("mode", mode_scale=1.29)
    assert abs(mode.mean().item() - 0.5) < 0.02 and mode.std() < uni.std()


def test_sigmas_are_the_schedulers_training_sigmas() -> None:
    s = training_sigmas()
    assert s[0] == 1.0 and abs(s[-1].item() - 1e-3) < 1e-9 and len(s) == 1000
    got = sigmas_from_density(torch.tensor([0.0, 0.5, 0.9999]))
    torch.testing.assert_close(got, s[[999, 500, 0]])  # σ follows u: a high draw is a noisy sample
    u = _draw("logit_normal", logit_mean=1.0)
    assert abs(sigmas_from_density(u).mean().item() - u.mean().item()) < 0.002


def test_loss_weights() -> None:
    s = torch.tensor([0.5, 0.25])
    torch.testing.assert_close(loss_weights("sigma_sqrt", s), torch.tensor([4.0, 16.0]))
    torch.testing.assert_close(loss_weights("none", s), torch.ones(2))
    assert loss_weights("cosmap", s)[0] > loss_weights("cosmap", torch.tensor([0.01]))[0]


class _Echo(torch.nn.Module):
    """Predicts its input: the loss then has a closed form to check against."""

    def forward(self, hidden_states: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor]:
        self.seen = kwargs
        return (hidden_states,)


def test_loss_is_velocity_mse_with_sigma_as_timestep() -> None:
    x0 = torch.randn(2, 5, 3)
    noise = torch.randn(2, 5, 3)
    sig = torch.tensor([0.2, 0.7])
    model = _Echo()
    loss = flow_matching_loss(
        model,
        latents=x0,
        latent_ids=torch.zeros(2, 5, 4),
        prompt_embeds=torch.zeros(2, 4, 8),
        text_ids=torch.zeros(2, 4, 4),
        sigmas=sig,
        noise=noise,
        guidance=None,
    )
    noisy = (1 - sig.view(-1, 1, 1)) * x0 + sig.view(-1, 1, 1) * noise
    expected = ((noisy - (noise - x0)) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(model.seen["timestep"], sig)


def test_mode_scale_controls_the_concentration() -> None:
    flat = _draw("mode", mode_scale=0.0)
    peaked = _draw("mode", mode_scale=1.29)
    assert abs(flat.std().item() - math.sqrt(1 / 12)) < 0.01  # scale 0 is uniform
    assert peaked.std() < flat.std() * 0.9
