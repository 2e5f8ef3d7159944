"""What the training options of data and loss add to a step's GPU memory (pure, no torch): masked loss
(dataset.mask_path) and prior-prediction preservation (training.preservation).

Both are small beside the activations, but they are counted, at the start of backward (where the loss
was just taken):

- a mask: the per-token weights (B × N, fp32) and the weighted error (B × N × C, fp32) the loss keeps;
- prior_prediction: the base model's prediction (B × N × C, fp32), the target held through the training
  forward. Its own no-grad forward runs before, with no gradients alive and one block's inference
  activations at a time: below the training step's peak, so it does not set the peak.
"""

from __future__ import annotations

from flux2_lora.config import TrainConfig


def loss_extra_bytes(config: TrainConfig, image_tokens: int, channels: int) -> float:
    b = config.training.batch_size
    out = 0.0
    ds = config.dataset
    if ds.mask_path.strip() or any(e.mask_path.strip() for e in ds.extra):
        out += 4.0 * b * image_tokens * (1 + channels)
    if config.training.preservation == "prior_prediction":
        out += 4.0 * b * image_tokens * channels
    return out
