"""Preservation (dataset.regularization_path + training.preservation): the base model's prediction on
the regularization prompts is the target, so the LoRA's output there stays closer to the base model's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from flux2_lora.training.flow import predict
from flux2_lora.training.preservation import adapters_off, prior_prediction
from flux2_lora.training.trainer import Trainer
from tests.conftest import MakeConfig

STEPS = 40  # of the demo's own data, in every run compared


def _regularization(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i in range(4):
        Image.effect_noise((64, 64), 40 + 10 * i).convert("RGB").save(folder / f"reg{i}.png")
        (folder / f"reg{i}.txt").write_text(f"a shape on stripes, picture {i}", encoding="utf-8")
    return folder


def _reg_batches(t: Trainer) -> list[dict[str, Any]]:
    """Fixed inputs on the regularization prompts: every reg image at σ 0.3 and 0.7, one noise draw."""
    from flux2_lora.training.batches import pack, text_ids_for

    out = []
    gen = torch.Generator().manual_seed(0)
    assert t.latents is not None and t.prompts is not None
    for n, item in enumerate(t.items):
        if not item.regularization:
            continue
        x0 = t.latents.get(n, False, 0)[None].to(t.device, t.dtype)
        packed, ids = pack(x0)
        embeds = t.prompts.batch([item.caption], t.device, t.dtype)
        for sigma in (0.3, 0.7):
            out.append(
                dict(
                    latents=packed,
                    latent_ids=ids,
                    prompt_embeds=embeds,
                    text_ids=text_ids_for(embeds),
                    sigmas=torch.tensor([sigma]),
                    noise=torch.randn(packed.shape, generator=gen),
                    guidance=None,
                )
            )
    return out


@torch.no_grad()
def _distance_from_base(t: Trainer, batches: list[dict[str, Any]]) -> float:
    model = t.accelerator.unwrap_model(t.model)
    total = 0.0
    for b in batches:
        base = prior_prediction(model, b)
        total += float(((predict(model, **b).float() - base) ** 2).mean())
    return total / len(batches)


def _trained(make_config: MakeConfig, out: Path, steps: int, *overrides: str) -> Trainer:
    t = Trainer(
        make_config("training.learning_rate=0.005", "training.lr_scheduler=constant", *overrides, out=out)
    )
    t.setup()
    for step in range(1, steps + 1):
        t.train_step(step)
    return t


@pytest.mark.slow  # three short demo runs: about a minute
def test_prior_prediction_keeps_the_regularization_prompts_closer_to_the_base(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """Three runs with the same number of steps on the demo's own data (the regularization ones come on
    top): without regularization, with regularization images trained as images, and with prior
    prediction. Measured on the regularization prompts: the prior-prediction LoRA stays closest to the
    base model."""
    reg = _regularization(tmp_path / "reg")
    runs = {}
    for name, extra in {
        # The regularization set is loaded in every run (the same items); this one barely draws it.
        "none": ["dataset.regularization_weight=0.001"],
        "images": ["training.preservation=none"],
        "prior": ["training.preservation=prior_prediction"],
    }.items():
        t = Trainer(
            make_config(
                "training.learning_rate=0.005",
                "training.lr_scheduler=constant",
                f"dataset.regularization_path={reg}",
                *extra,
                out=tmp_path / name,
            )
        )
        t.setup()
        own = step = 0
        assert t.schedule is not None
        while own < STEPS:  # the same number of steps on the demo's own data in every run
            step += 1
            (item, _), *_ = t.schedule.micro_batch(step, 0, 0, 1, 1)
            own += not t.items[item].regularization
            t.train_step(step)
        # The same inputs in every run: the same reg images, captions and noise.
        runs[name] = _distance_from_base(t, _reg_batches(t))
    print("distance from the base model on the regularization prompts:", runs)
    assert runs["prior"] < 0.5 * runs["none"], runs
    assert runs["prior"] < runs["images"], runs


def test_adapters_off_is_the_base_model(make_config: MakeConfig) -> None:
    t = _trained(make_config, Path(make_config().output.dir), 3)
    model = t.accelerator.unwrap_model(t.model)
    batch = t.micro_batch(4, 0)
    batch.pop("dropout_seed")
    with torch.no_grad():
        lora = predict(model, **batch)
        with adapters_off(model):
            off = predict(model, **batch)
        for p in t.lora_params:  # the same as zeroing the adapter's up-projection
            if p.ndim == 2 and "lora_B" in next(n for n, q in model.named_parameters() if q is p):
                p.zero_()
        zeroed = predict(model, **batch)
    assert not torch.allclose(lora, off)
    assert torch.allclose(off, zeroed, atol=1e-5)


def test_preservation_needs_regularization_images(make_config: MakeConfig) -> None:
    from flux2_lora.config.io import ConfigError

    with pytest.raises(ConfigError, match="training.preservation"):
        make_config("training.preservation=prior_prediction")


def test_prior_prediction_runs_with_block_swap(make_config: MakeConfig, tmp_path: Path) -> None:
    """The base prediction is one more no-grad forward through the swapped blocks (on the CPU the swap
    runs the same packing and copies): the steps train, and give the steps of the same run unswapped."""
    reg = _regularization(tmp_path / "reg")
    losses = []
    for swap in (0, 2):
        t = Trainer(
            make_config(
                f"dataset.regularization_path={reg}",
                "training.preservation=prior_prediction",
                f"memory.blocks_to_swap={swap}",
                out=tmp_path / f"swap{swap}",
            )
        )
        t.setup()
        assert t.schedule is not None
        reg_steps = [
            s for s in range(1, 9) if t.items[t.schedule.micro_batch(s, 0, 0, 1, 1)[0][0]].regularization
        ]
        assert reg_steps  # a regularization batch is among the steps run
        losses.append(torch.stack([t.train_step(s) for s in range(1, 9)]))
    torch.testing.assert_close(losses[0], losses[1])
