"""Several datasets (dataset.extra_paths / extra_weights): drawn by weight, batches within one dataset,
every dataset read epoch by epoch, and the draws a pure function of (seed, micro-batch)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from flux2_lora.training.mix import MixedSchedule
from flux2_lora.training.trainer import Trainer
from tests.conftest import MakeConfig


def _folder(path: Path, n: int, word: str) -> Path:
    path.mkdir(parents=True)
    for i in range(n):
        Image.effect_noise((64, 64), 60).convert("RGB").save(path / f"{word}{i}.png")
        (path / f"{word}{i}.txt").write_text(f"{word} {i}", encoding="utf-8")
    return path


def test_weights_one_to_three_are_sampled_one_to_three() -> None:
    s = MixedSchedule([[0, 1, 2], [3, 4]], [1] * 5, [1.0, 3.0], seed=7, batch_size=2)
    draws = [s.micro_batch(step, 0, 0, 1, 1) for step in range(1, 4001)]
    sources = Counter(0 if batch[0][0] < 3 else 1 for batch in draws)
    assert sources[1] / sources[0] == pytest.approx(3.0, rel=0.1)  # 1000 : 3000 expected
    for batch in draws:  # a batch never mixes datasets
        assert len({i < 3 for i, _ in batch}) == 1
    ids = [g for batch in draws for _, g in batch]
    assert len(ids) == len(set(ids))  # sample ids (noise, flips) never repeat across datasets


def test_each_dataset_is_read_epoch_by_epoch() -> None:
    s = MixedSchedule([[0, 1, 2, 3], [4, 5]], [1] * 6, [1.0, 1.0], seed=3)
    firsts = [s.micro_batch(k, 0, 0, 1, 1)[0][0] for k in range(1, 200)]
    a = [i for i in firsts if i < 4]
    assert all(sorted(a[e * 4 : e * 4 + 4]) == [0, 1, 2, 3] for e in range(len(a) // 4))


def test_draws_are_a_pure_function_of_the_micro_batch() -> None:
    """A resumed run (a fresh schedule, asked from step 500 on) sees what the uninterrupted one saw, on
    every rank and accumulation micro-step."""
    args = ([[0, 1], [2, 3, 4]], [1, 2, 1, 1, 1], [2.0, 1.0], 11, 1)
    whole = MixedSchedule(*args)
    expected = [whole.micro_batch(st, m, r, 2, 2) for st in range(1, 520) for m in range(2) for r in range(2)]
    resumed = MixedSchedule(*args)
    got = [resumed.micro_batch(st, m, r, 2, 2) for st in range(500, 520) for m in range(2) for r in range(2)]
    assert got == expected[-len(got) :]


def test_two_datasets_train_in_one_run_by_weight(make_config: MakeConfig, tmp_path: Path) -> None:
    main = _folder(tmp_path / "cats", 3, "cat")
    extra = _folder(tmp_path / "dogs", 2, "dog")
    t = Trainer(
        make_config(
            f"dataset.path={main}",
            f"dataset.extra_paths=[{extra}]",
            "dataset.extra_weights=[3]",
            "dataset.resolution=64",
            "dataset.trigger_word=sks",
        )
    )
    t.setup()
    assert [(i.path.name, i.source) for i in t.items] == [
        ("cat0.png", 0),
        ("cat1.png", 0),
        ("cat2.png", 0),
        ("dog0.png", 1),
        ("dog1.png", 1),
    ]
    assert t.items[3].caption.startswith("sks")  # the section's caption settings apply to every dataset
    assert isinstance(t.schedule, MixedSchedule)
    sources = Counter(t.items[t.schedule.micro_batch(s, 0, 0, 1, 1)[0][0]].source for s in range(1, 801))
    assert sources[1] / sources[0] == pytest.approx(3.0, rel=0.15)
    t.train_step(1)  # a step runs on the mixed batches


def test_extra_weights_must_match_the_paths(make_config: MakeConfig) -> None:
    from flux2_lora.config.io import ConfigError

    with pytest.raises(ConfigError, match="dataset.extra_weights"):
        make_config("dataset.extra_paths=[a, b]", "dataset.extra_weights=[1]")
    with pytest.raises(ConfigError, match="dataset.extra_weights"):
        make_config("dataset.extra_paths=[a]", "dataset.extra_weights=[0]")


def test_a_single_dataset_keeps_the_plain_schedule(make_config: MakeConfig) -> None:
    from flux2_lora.training.batches import SampleSchedule

    t = Trainer(make_config())
    t.setup()
    assert type(t.schedule) is SampleSchedule
