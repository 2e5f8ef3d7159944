"""The sample schedule is a pure function of (seed, step): what makes resume exact."""

from __future__ import annotations

from collections import Counter

from flux2_lora.training.batches import SampleSchedule, derive_seed


def test_every_item_once_per_epoch_times_repeats() -> None:
    s = SampleSchedule([3] * 5, seed=1)
    counts = Counter(s.item(g) for g in range(15))
    assert counts == {i: 3 for i in range(5)}


def test_per_item_repeats() -> None:
    s = SampleSchedule([1, 4], seed=0)
    assert Counter(s.item(g) for g in range(5)) == {0: 1, 1: 4}


def test_order_depends_on_seed_and_not_on_history() -> None:
    a = [SampleSchedule([1] * 7, seed=1).item(g) for g in range(21)]
    fresh = SampleSchedule([1] * 7, seed=1)
    assert [fresh.item(g) for g in range(20, 9, -1)] == a[20:9:-1]  # random access, any order
    assert a != [SampleSchedule([1] * 7, seed=2).item(g) for g in range(21)]


def test_ranks_and_micro_batches_see_disjoint_samples() -> None:
    s = SampleSchedule([1] * 100, 0, batch_size=3)
    seen = [
        g
        for step in (1, 2)
        for micro in range(2)
        for rank in range(2)
        for _, g in s.micro_batch(step, micro, rank, world=2, accum=2)
    ]
    assert len(seen) == len(set(seen)) == 2 * 2 * 2 * 3 and sorted(seen) == list(range(24))


def test_bucket_batches_never_mix_shapes_and_cover_the_epoch() -> None:
    shapes = [(64, 64), (48, 80), (80, 48)]
    buckets = [shapes[i % 3] for i in range(10)]
    s = SampleSchedule([1] * 10, seed=3, batch_size=2, buckets=buckets)
    epoch = len(s._epoch_batches(0))
    seen = []
    for k in range(epoch):
        batch = s.micro_batch(k + 1, 0, 0, 1, 1)
        assert len({buckets[i] for i, _ in batch}) == 1
        seen += [i for i, _ in batch]
    assert sorted(seen) == list(range(10))


def test_derive_seed_is_stable() -> None:
    assert derive_seed(42, 6, 10) == derive_seed(42, 6, 10)
    assert derive_seed(42, 6, 10) != derive_seed(42, 6, 11)
    assert 0 <= derive_seed(2**32 - 1, 7, 10**9) < 2**63
