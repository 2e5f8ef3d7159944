"""Optimizers and learning-rate schedules named by the config."""

from __future__ import annotations

from typing import Any

import torch

from flux2_lora.config import TrainingSection


class OptimizerUnavailable(RuntimeError):
    pass


def fused_optimizer_kwargs(params: list[torch.nn.Parameter]) -> dict[str, Any]:
    """torch's fused Adam/AdamW kernel on CUDA: one launch per step, no per-tensor temporaries."""
    if params and all(p.is_cuda for p in params):
        return {"fused": True}
    return {}


def build_optimizer(t: TrainingSection, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    betas = (t.adam_beta1, t.adam_beta2)
    if t.optimizer in ("adamw", "adam"):
        cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
        return cls(
            params,
            lr=t.learning_rate,
            betas=betas,
            eps=t.adam_epsilon,
            weight_decay=t.weight_decay,
            **fused_optimizer_kwargs(params),
        )
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.learning_rate, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adafactor":
        # torch's Adafactor: factored second moment (row + column statistics) for matrices, no first moment.
        return torch.optim.Adafactor(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    if t.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise OptimizerUnavailable(
                "training.optimizer: adamw8bit needs bitsandbytes; install flux2-lora[quantization]"
            ) from None
        if not any(p.is_cuda for p in params):
            raise OptimizerUnavailable(
                "training.optimizer: adamw8bit runs only on CUDA GPUs (bitsandbytes' 8-bit optimizer kernels); "
                "use adamw on CPU"
            )
        return bnb.optim.AdamW8bit(
            params, lr=t.learning_rate, betas=betas, eps=t.adam_epsilon, weight_decay=t.weight_decay
        )
    if t.optimizer == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise OptimizerUnavailable(
                "training.optimizer: prodigy needs prodigyopt; install flux2-lora[optimizers]"
            ) from None
        return Prodigy(
            params, lr=t.learning_rate, betas=betas, weight_decay=t.weight_decay, eps=t.adam_epsilon
        )
    raise OptimizerUnavailable(f"training.optimizer: unknown optimizer {t.optimizer!r}")


def build_scheduler(t: TrainingSection, optimizer: torch.optim.Optimizer) -> Any:
    from diffusers.optimization import get_scheduler

    name: str = t.lr_scheduler
    if name == "constant":
        name = "constant_with_warmup"  # plain 'constant' in diffusers ignores warmup
    return get_scheduler(
        name,
        optimizer=optimizer,
        num_warmup_steps=t.warmup_steps,
        num_training_steps=t.max_steps,
    )
