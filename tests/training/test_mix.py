"""Several datasets (dataset.extra entries): drawn by weight, batches within one dataset and bucket, each
entry's own resolution, repeats and caption settings, every dataset read epoch by epoch, and the draws a
pure function of (seed, micro-batch)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

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
            f"dataset.extra=[{{path: '{extra}', weight: 3}}]",
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
    assert t.items[3].caption.startswith("sks")  # an entry's unset caption settings are the section's
    assert isinstance(t.schedule, MixedSchedule)
    sources = Counter(t.items[t.schedule.micro_batch(s, 0, 0, 1, 1)[0][0]].source for s in range(1, 801))
    assert sources[1] / sources[0] == pytest.approx(3.0, rel=0.15)
    t.train_step(1)  # a step runs on the mixed batches


def test_old_extra_paths_convert_to_entries_with_a_warning(tmp_path: Path) -> None:
    from flux2_lora.config.io import ConfigError, load_config

    config, warnings = load_config(
        overrides=[
            "dataset.extra_paths=[a, b]",
            "dataset.extra_weights=[1, 3]",
            "dataset.regularization_path=reg",
            "dataset.regularization_weight=2",
        ]
    )
    got = [(e.path, e.weight, e.role) for e in config.dataset.extra]
    assert got == [("a", 1.0, "train"), ("b", 3.0, "train"), ("reg", 2.0, "regularization")]
    assert any(w.path == "dataset.extra_paths" and "dataset.extra" in w.message for w in warnings)
    with pytest.raises(ConfigError, match="dataset.extra_weights"):
        load_config(overrides=["dataset.extra_paths=[a, b]", "dataset.extra_weights=[1]"])
    with pytest.raises(ConfigError, match=r"dataset.extra\[0\].weight: must be > 0"):
        load_config(overrides=["dataset.extra_paths=[a]", "dataset.extra_weights=[0]"])
    # A config built without the loader (no conversion) names the field that replaced them.
    from flux2_lora.config import TrainConfig

    with pytest.raises(ValueError, match="replaced by dataset.extra"):
        TrainConfig.model_validate({"dataset": {"extra_paths": ["a"]}})


def test_entry_errors_name_the_entry_and_field() -> None:
    from flux2_lora.config.io import ConfigError, load_config

    cases = {
        "{path: a, resolution: 500}": r"dataset.extra\[0\].resolution: must be a multiple of 16",
        "{path: a, bogus: 1}": r"dataset.extra\[0\].bogus: unknown key",
        "{path: a, role: reg}": r"dataset.extra\[0\].role: must be one of",
        "{path: a, caption_dropout: 2}": r"dataset.extra\[0\].caption_dropout: must be ≤ 1",
        "{weight: 2}": r"dataset.extra\[0\].path: is required",
        "{path: demo}": r"dataset.extra\[0\].path: is dataset.path itself",
    }
    for entry, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_config(overrides=[f"dataset.extra=[{entry}]"])


def test_entries_train_with_their_own_resolution_repeats_and_captions(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """An entry's resolution gives its items that latent size; its trigger word, default caption and
    caption dropout apply to its items only; its repeats count its own images; a regularization entry adds
    no trigger word."""
    main = _folder(tmp_path / "cats", 2, "cat")
    big = _folder(tmp_path / "dogs", 2, "dog")
    (big / "dog1.txt").unlink()  # takes this entry's default caption
    reg = _folder(tmp_path / "reg", 1, "person")
    t = Trainer(
        make_config(
            f"dataset.path={main}",
            "dataset.resolution=64",
            "dataset.trigger_word=sks",
            "dataset.default_caption=unused",
            f"dataset.extra=[{{path: '{big}', resolution: 96, trigger_word: ohwx, default_caption: a dog, "
            f"caption_dropout: 1.0, repeats: 3}}, {{path: '{reg}', role: regularization}}]",
        )
    )
    t.setup()
    by_source = {s: [i for i in t.items if i.source == s] for s in (0, 1, 2)}
    assert [i.caption for i in by_source[0]] == ["sks, cat 0", "sks, cat 1"]
    assert [i.caption for i in by_source[1]] == ["ohwx, dog 0", "ohwx, a dog"]
    assert [i.caption for i in by_source[2]] == ["person 0"]  # no trigger for regularization
    assert [i.regularization for i in t.items] == [False, False, False, False, True]
    assert t.prompts is not None and isinstance(t.schedule, MixedSchedule)
    seen: list[list[str]] = []
    encode = t.prompts.batch

    def recording(captions: list[str], *a: Any) -> Any:
        seen.append(list(captions))
        return encode(captions, *a)

    t.prompts.batch = recording
    tokens: dict[int, set[int]] = {}
    for step in range(1, 80):  # batches stay within one entry, at that entry's latent size
        batch = t.micro_batch(step, 0)
        pairs = t.schedule.micro_batch(step, 0, 0, 1, 1)
        source = t.items[pairs[0][0]].source
        assert {t.items[i].source for i, _ in pairs} == {source}
        tokens.setdefault(source, set()).add(batch["latents"].shape[1])
        assert all((c == "") == (source == 1) for c in seen[-1])  # only the entry's captions drop out
    assert tokens == {0: {(64 // 16) ** 2}, 1: {(96 // 16) ** 2}, 2: {(64 // 16) ** 2}}
    assert [len(s.expanded) for s in t.schedule.schedules] == [2, 6, 1]  # repeats 3 for the entry only


def test_a_single_dataset_keeps_the_plain_schedule(make_config: MakeConfig) -> None:
    from flux2_lora.training.batches import SampleSchedule

    t = Trainer(make_config())
    t.setup()
    assert type(t.schedule) is SampleSchedule
