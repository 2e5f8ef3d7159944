"""Masked loss (dataset.mask_path): masks follow their image's crop and flip, and a black region of the
mask contributes nothing to the loss's gradients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from flux2_lora.training.flow import flow_matching_loss, predict
from flux2_lora.training.masks import masked_mean, token_weights
from flux2_lora.training.trainer import Trainer
from tests.conftest import MakeConfig


def _dataset(folder: Path, size: tuple[int, int] = (64, 64), black_left: bool = True) -> Path:
    """Two noise images, captions, and masks/: img0's left half black, img1 without a mask."""
    (folder / "masks").mkdir(parents=True)
    for i in range(2):
        Image.effect_noise(size, 80).convert("RGB").save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a noise picture {i}", encoding="utf-8")
    mask = Image.new("L", size, 255)
    if black_left:
        mask.paste(0, (0, 0, size[0] // 2, size[1]))
    mask.save(folder / "masks" / "img0.png")
    return folder


def test_token_weights_pool_each_16px_patch_and_floor_at_unmasked_weight() -> None:
    mask = torch.ones(32, 48)
    mask[:, :16] = 0  # the first token column
    mask[:16, 16:24] = 0  # half of token (0, 1)
    w = token_weights(mask)
    assert w.tolist() == [0.0, 0.5, 1.0, 0.0, 1.0, 1.0]  # row-major, as latents are packed
    assert token_weights(mask, 0.2).tolist() == pytest.approx([0.2, 0.6, 1.0, 0.2, 1.0, 1.0])


def test_masked_tokens_have_no_gradient_through_a_per_token_model() -> None:
    """A per-token model (no attention): the latents under the mask's zeros get exactly zero gradient,
    the others do not; and the loss equals the unmasked tokens' mean error."""

    class PerToken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.full((8,), 0.5))

        def forward(self, hidden_states: torch.Tensor, **_: object) -> tuple[torch.Tensor]:
            return (hidden_states * self.w,)

    torch.manual_seed(0)
    latents = torch.randn(2, 6, 8, requires_grad=True)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 1]], dtype=torch.float32)
    inputs: dict[str, Any] = dict(
        latents=latents,
        latent_ids=torch.zeros(2, 6, 4),
        prompt_embeds=torch.zeros(2, 3, 8),
        text_ids=torch.zeros(2, 3, 4),
        sigmas=torch.tensor([0.3, 0.7]),
        noise=torch.randn(2, 6, 8),
        guidance=None,
    )
    loss = flow_matching_loss(PerToken(), mask=mask, **inputs)
    loss.backward()
    assert latents.grad is not None
    per_token = latents.grad.abs().sum(dim=-1)
    assert torch.all(per_token[mask == 0] == 0)
    assert torch.all(per_token[mask == 1] > 0)
    with torch.no_grad():
        pred = PerToken()(
            (1 - inputs["sigmas"].view(-1, 1, 1)) * latents
            + inputs["sigmas"].view(-1, 1, 1) * inputs["noise"]
        )[0]
        err = ((pred - (inputs["noise"] - latents)) ** 2).mean(dim=-1)
        expected = torch.stack([err[b][mask[b] == 1].mean() for b in range(2)]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_an_all_ones_mask_is_the_plain_loss() -> None:
    err = torch.rand(3, 5, 4)
    assert torch.allclose(masked_mean(err, torch.ones(3, 5)), masked_mean(err, None))


def test_demo_masks_follow_flips_and_zero_the_predictions_gradient(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """On the demo model: the batch's mask is zero on the left half of img0's tokens (the right half when
    the sample is flipped), one everywhere for img1 (no mask file); the loss's gradient with respect to the
    transformer's prediction is zero exactly on the masked tokens, and the LoRA still gets gradients."""
    folder = _dataset(tmp_path / "data")
    t = Trainer(
        make_config(
            f"dataset.path={folder}",
            "dataset.mask_path=masks",
            "dataset.resolution=64",
            "dataset.random_flip=true",
            "training.batch_size=1",
        )
    )
    t.setup()
    assert [i.path.name for i in t.items] == ["img0.png", "img1.png"]  # the masks folder does not train
    left = torch.tensor([c < 2 for r in range(4) for c in range(4)])  # 4×4 tokens, row-major
    seen = set()
    assert t.schedule is not None
    for step in range(1, 30):
        ((item, g),) = t.schedule.micro_batch(step, 0, 0, 1, 1)
        batch = t.micro_batch(step, 0)
        batch.pop("dropout_seed")
        mask = batch["mask"][0].cpu()
        if item == 1:
            assert torch.all(mask == 1)
            continue
        flipped = bool(torch.all(mask[~left] == 0))
        zero = ~left if flipped else left
        assert torch.all(mask[zero] == 0) and torch.all(mask[~zero] == 1)
        seen.add(flipped)
        if len(seen) == 2:
            break
    assert seen == {False, True}  # both flips were checked
    model = t.accelerator.unwrap_model(t.model)
    pred_inputs = {k: v for k, v in batch.items() if k != "mask"}
    pred = predict(model, **pred_inputs)
    pred.retain_grad()
    target = batch["noise"].float() - batch["latents"].float()
    loss = masked_mean((pred.float() - target) ** 2, batch["mask"]).mean()
    loss.backward()
    assert pred.grad is not None
    grad = pred.grad[0].abs().sum(dim=-1).cpu()
    assert torch.all(grad[zero] == 0) and torch.all(grad[~zero] > 0)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in t.lora_params)


def test_a_mask_path_that_is_not_a_folder_is_refused_by_name(make_config: MakeConfig, tmp_path: Path) -> None:
    from flux2_lora.data.scan import DatasetError

    folder = _dataset(tmp_path / "data")
    t = Trainer(make_config(f"dataset.path={folder}", "dataset.mask_path=nowhere", "dataset.resolution=64"))
    with pytest.raises(DatasetError, match="dataset.mask_path"):
        t.setup()


def test_unmasked_weight_without_masks_is_refused(make_config: MakeConfig) -> None:
    from flux2_lora.config.io import ConfigError

    with pytest.raises(ConfigError, match="dataset.unmasked_weight"):
        make_config("dataset.unmasked_weight=0.1")
