"""Preservation (training.preservation): regularization batches (dataset.extra entries with role regularization) and their
target. ``prior_prediction`` matches the base model's own prediction on them (the adapter switched off,
no gradient), as OneTrainer's PRIOR_PREDICTION and ai-toolkit's output preservation do: the LoRA learns
to leave those prompts as the base model draws them. ``none`` trains them on their images (DreamBooth's
prior preservation); either way their loss is scaled by training.preservation_weight."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch

from flux2_lora.config import TrainingSection
from flux2_lora.training.flow import predict

_PREDICT_INPUTS = frozenset(inspect.signature(predict).parameters) - {"transformer"}


@contextlib.contextmanager
def adapters_off(model: Any) -> Iterator[None]:
    """The base model: every PEFT layer (LoRA, LoKr, LoHa) passes its base layer's output through."""
    model.disable_adapters()
    try:
        yield
    finally:
        model.enable_adapters()


@torch.no_grad()
def prior_prediction(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """The base model's velocity prediction on a batch's inputs, in fp32 (the target: no gradient)."""
    with adapters_off(model):
        return predict(model, **{k: v for k, v in batch.items() if k in _PREDICT_INPUTS}).float()


def regularization_inputs(
    t: TrainingSection, model: Any, batch: dict[str, Any], regularization: bool
) -> dict[str, Any]:
    """``batch`` with the loss's preservation inputs (``scale``, and ``target`` for prior_prediction)
    when it is a regularization batch; ``model`` is the unwrapped transformer."""
    if not regularization:
        return batch
    out = {**batch, "scale": t.preservation_weight}
    if t.preservation == "prior_prediction":
        out["target"] = prior_prediction(model, batch)
    return out
