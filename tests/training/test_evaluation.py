"""The eval loss: held-out images, fixed noise levels and noise, comparable across runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flux2_lora import runs
from flux2_lora.training.evaluation import EvalError
from flux2_lora.training.trainer import Trainer, run_training
from tests.helpers import assert_finished


def test_same_eval_set_same_start_then_training_moves_it(make_config: Any, tmp_path: Path) -> None:
    common = ("validation.eval_images=2", "validation.eval_every=2", "training.max_steps=4")
    a = make_config(*common, "training.learning_rate=1e-3", "training.seed=1", out=tmp_path / "a")
    b = make_config(
        *common, "training.learning_rate=3e-3", "lora.rank=8", "training.seed=2", out=tmp_path / "b"
    )
    assert_finished(run_training(a), a)
    assert_finished(run_training(b), b)
    ea, eb = runs.read_eval(a.output.dir), runs.read_eval(b.output.dir)
    assert [r["step"] for r in ea] == [0, 2, 4] and [r["step"] for r in eb] == [0, 2, 4]
    # Before training the LoRA adds nothing (its up-projection starts at zero): the same set, the same loss.
    assert ea[0]["eval_loss"] == pytest.approx(eb[0]["eval_loss"], rel=1e-6)
    assert ea[-1]["eval_loss"] != pytest.approx(ea[0]["eval_loss"], rel=1e-4)
    assert ea[-1]["eval_loss"] != pytest.approx(eb[-1]["eval_loss"], rel=1e-4)
    status = runs.read_status(a.output.dir)
    assert status.extra["final_eval_loss"] == ea[-1]["eval_loss"]
    assert status.extra["best_eval_loss"] == min(r["eval_loss"] for r in ea)
    assert all(r["seconds"] > 0 for r in ea)


def test_held_out_images_are_never_trained_on(make_config: Any) -> None:
    t = Trainer(make_config("validation.eval_images=3"))
    t.setup()
    assert t.eval_set is not None and len(t.eval_set.items) == 3
    trained = {i.path for i in t.items}
    assert trained.isdisjoint(i.path for i in t.eval_set.items)
    assert len(trained) + 3 == 12  # the demo dataset
    # The choice depends on the eval seed, not on the training seed.
    other = Trainer(make_config("validation.eval_images=3", "training.seed=99"))
    other.setup()
    assert [i.path for i in other.eval_set.items] == [i.path for i in t.eval_set.items]


def test_an_eval_folder_is_scored_instead(make_config: Any, tmp_path: Path) -> None:
    from tests.training.test_trainer_fields import make_images

    folder = make_images(tmp_path / "eval", [(64, 64), (64, 64)], {0: "a red circle", 1: "a blue square"})
    config = make_config(
        f"validation.eval_folder={folder}", "training.max_steps=2", "validation.eval_every=1"
    )
    assert_finished(run_training(config), config)
    assert [r["step"] for r in runs.read_eval(config.output.dir)] == [0, 1, 2]


def test_too_many_held_out_images_is_refused(make_config: Any) -> None:
    with pytest.raises(EvalError, match=r"validation\.eval_images: 12 held-out images would leave none"):
        Trainer(make_config("validation.eval_images=12")).setup()


def test_resume_keeps_the_eval_history(make_config: Any) -> None:
    config = make_config(
        "validation.eval_images=2",
        "validation.eval_every=2",
        "training.max_steps=4",
        "output.checkpoint_every=2",
    )
    assert_finished(run_training(config), config)
    out = Path(config.output.dir)
    first = runs.read_eval(out)
    # Resume from the step-2 checkpoint: the history up to there is kept, the new records follow.
    ckpt2 = out / runs.CHECKPOINTS_DIR / "checkpoint-2"
    assert_finished(run_training(config, str(ckpt2)), config)
    again = runs.read_eval(out)
    assert [r["step"] for r in again] == [0, 2, 4, 4]
    assert again[-1]["eval_loss"] == pytest.approx(first[-1]["eval_loss"], rel=1e-5)  # exact resume
