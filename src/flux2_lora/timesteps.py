"""Training noise levels (σ) as pure math: sampling schemes, shifts, and their density for the UI.

No torch: the trainer's torch sampler (:mod:`flux2_lora.training.flow`) applies the same formulas to tensors,
and the web UI plots :func:`density` without importing torch. A test checks that both agree.

- uniform: u ~ U(0, 1)
- logit_normal: u = sigmoid(N(logit_mean, logit_std)) (SD3); positive mean → more noise
- sigmoid: u = sigmoid(sigmoid_scale · N(0, 1)) (x-flux / ai-toolkit's "sigmoid")
- mode: SD3's mode sampling with mode_scale
Then σ ≈ u on the scheduler's 1000-step grid, and optionally shifted:
- fixed: σ' = s·σ / (1 + (s − 1)·σ) (FLUX.1 / SD3 static shift)
- resolution: FLUX.2's scheduler shift, exponential with μ growing linearly in the number of image
  tokens from base_shift (256 tokens) to max_shift (4096 tokens): σ' = e^μ / (e^μ + 1/σ − 1)
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

NUM_TRAIN_TIMESTEPS = 1000
# FLUX.2's FlowMatchEulerDiscreteScheduler config (scheduler/scheduler_config.json of dev and klein).
BASE_SHIFT, MAX_SHIFT = 0.5, 1.15
BASE_SEQ_LEN, MAX_SEQ_LEN = 256, 4096


def mu_for_tokens(image_tokens: int) -> float:
    slope = (MAX_SHIFT - BASE_SHIFT) / (MAX_SEQ_LEN - BASE_SEQ_LEN)
    return BASE_SHIFT + slope * (image_tokens - BASE_SEQ_LEN)


def shift_sigma(sigma: Any, mode: str, shift: float, image_tokens: int) -> Any:
    """Works on floats and on torch tensors alike (only arithmetic)."""
    if mode == "fixed":
        return shift * sigma / (1 + (shift - 1) * sigma)
    if mode == "resolution":
        e = math.exp(mu_for_tokens(image_tokens))
        return e / (e + (1 / sigma - 1))
    return sigma


def quantize(u: float) -> float:
    """σ on the scheduler's grid: linspace(1, 1/1000, 1000), indexed so that σ ≈ u."""
    index = min(max(int((1 - u) * NUM_TRAIN_TIMESTEPS), 0), NUM_TRAIN_TIMESTEPS - 1)
    return 1.0 - index * (1.0 - 1.0 / NUM_TRAIN_TIMESTEPS) / (NUM_TRAIN_TIMESTEPS - 1)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def draw_u(scheme: str, rng: random.Random, t: Any) -> float:
    if scheme == "logit_normal":
        return _sigmoid(rng.gauss(t.logit_mean, t.logit_std))
    if scheme == "sigmoid":
        return _sigmoid(t.sigmoid_scale * rng.gauss(0.0, 1.0))
    u = rng.random()
    if scheme == "mode":
        return 1 - u - t.mode_scale * (math.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


def draw_sigmas(t: Any, image_tokens: int, n: int, seed: int = 0) -> list[float]:
    """n training σ for a TrainingSection-like object ``t`` (pure Python)."""
    rng = random.Random(seed)
    return [
        shift_sigma(quantize(draw_u(t.timestep_sampling, rng, t)), t.timestep_shift, t.shift, image_tokens)
        for _ in range(n)
    ]


def image_tokens_for(resolution: int) -> int:
    """FLUX.2: VAE /8, then 2×2 patches → one token per 16×16 pixels."""
    return (resolution // 16) ** 2


def _normal_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _u_density(t: Any, u: float) -> float:
    """Density of u (σ before any shift) at u, for the scheme of ``t``."""
    scheme = t.timestep_sampling
    if scheme in ("logit_normal", "sigmoid"):
        mean, std = (t.logit_mean, t.logit_std) if scheme == "logit_normal" else (0.0, t.sigmoid_scale)
        return _normal_pdf((math.log(u / (1 - u)) - mean) / std) / (std * u * (1 - u))
    if scheme == "mode":
        return _mode_density(t.mode_scale, u)
    return 1.0


def _mode_density(s: float, x: float) -> float:
    """u = f(v) = 1 − v − s(cos²(πv/2) − 1 + v) with v ~ U(0, 1): the sum of 1/|f'(v)| over the v with
    f(v) = x, found by bisection on f's monotone pieces (f' = 0 where sin(πv) = (1 + s)/(sπ/2))."""

    def f(v: float) -> float:
        return 1 - v - s * (math.cos(math.pi * v / 2) ** 2 - 1 + v)

    def df(v: float) -> float:
        return -1 - s + s * math.pi / 2 * math.sin(math.pi * v)

    cuts = [0.0, 1.0]
    if s:
        c = (1 + s) / (s * math.pi / 2)
        if 0 < c < 1:
            a = math.asin(c) / math.pi
            cuts = [0.0, a, 1 - a, 1.0]
    total = 0.0
    for lo, hi in itertools.pairwise(cuts):
        flo, fhi = f(lo) - x, f(hi) - x
        if flo * fhi > 0:
            continue
        for _ in range(50):
            mid = (lo + hi) / 2
            fm = f(mid) - x
            if (fm > 0) == (flo > 0):
                lo, flo = mid, fm
            else:
                hi = mid
        slope = abs(df((lo + hi) / 2))
        total += 1 / slope if slope > 1e-12 else math.inf
    return total


def density_curve(t: Any, image_tokens: int, points: int = 120) -> list[tuple[float, float]]:
    """The probability density of training σ at ``points`` evenly spaced σ in (0, 1), exact: the scheme's
    density of u carried through the shift σ = s·u / (1 + (s − 1)·u) by a change of variables (the
    resolution shift is that formula with s = e^μ). The 1000-step grid of :func:`quantize` is ignored."""
    if t.timestep_shift == "fixed":
        s = float(t.shift)
    elif t.timestep_shift == "resolution":
        s = math.exp(mu_for_tokens(image_tokens))
    else:
        s = 1.0
    out = []
    for i in range(points):
        y = (i + 0.5) / points
        d = s - (s - 1) * y
        out.append((y, _u_density(t, y / d) * s / (d * d)))
    return out
