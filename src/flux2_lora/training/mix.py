"""Several datasets in one run (dataset.extra, role train or regularization): which dataset each
micro-batch comes from, drawn by weight, and its items within that dataset (no torch).

Micro-batch k (counted over steps, accumulation and ranks, as :class:`SampleSchedule` counts them) draws
its dataset from a generator seeded by (seed, k) alone, with probability weight / Σ weights; within the
dataset it takes the dataset's own next batch (its own seeded permutation or buckets), so every dataset
is read epoch by epoch and batches never mix datasets. All of it is a pure function of (seed, k): a
resumed run continues with the same draws (recounted from k = 0: a few microseconds per micro-batch).
"""

from __future__ import annotations

import random
from typing import Any

from flux2_lora.training.batches import SampleSchedule, derive_seed


class MixedSchedule:
    """:class:`SampleSchedule`'s interface over several datasets' schedules."""

    def __init__(
        self,
        members: list[list[int]],  # each dataset's item indices (into the run's item list)
        repeats: list[int],  # per item of the run
        weights: list[float],  # per dataset
        seed: int,
        batch_size: int = 1,
        groups: list[Any] | None = None,  # per item of the run (bucket / edit group), or None
    ):
        if len(members) != len(weights) or not members:
            raise ValueError("one weight per dataset")
        self.members = members
        self.weights = weights
        self.seed = seed
        self.schedules = [
            SampleSchedule(
                [repeats[i] for i in m],
                derive_seed(seed, 12, n),
                batch_size,
                [groups[i] for i in m] if groups is not None else None,
            )
            for n, m in enumerate(members)
        ]
        self._choices: list[int] = []  # the dataset of micro-batch k, for every k drawn so far
        self._position: list[int] = []  # how many earlier micro-batches drew the same dataset
        self._counts = [0] * len(members)

    def dataset_of(self, k: int) -> int:
        """The dataset micro-batch ``k`` comes from."""
        self._extend(k)
        return self._choices[k]

    def _extend(self, k: int) -> None:
        indices = range(len(self.members))
        for j in range(len(self._choices), k + 1):
            c = random.Random(derive_seed(self.seed, 11, j)).choices(indices, weights=self.weights)[0]
            self._choices.append(c)
            self._position.append(self._counts[c])
            self._counts[c] += 1

    def micro_batch(self, step: int, micro: int, rank: int, world: int, accum: int) -> list[tuple[int, int]]:
        """(item, sample id) of one micro-batch (step is 1-based); sample ids are unique over datasets."""
        k = ((step - 1) * accum + micro) * world + rank
        self._extend(k)
        source, position = self._choices[k], self._position[k]
        local = self.schedules[source].micro_batch(position + 1, 0, 0, 1, 1)
        n = len(self.members)
        return [(self.members[source][i], g * n + source) for i, g in local]


def build_schedule(items: list[Any], config: Any, groups: list[Any] | None) -> SampleSchedule | MixedSchedule:
    """One dataset: the plain :class:`SampleSchedule` (as before); several: a :class:`MixedSchedule`.
    Each dataset's repeats and weight are its own (data/entries.py: an entry's unset repeats are
    dataset.repeats)."""
    from flux2_lora.data.entries import dataset_parts

    t = config.training
    parts = dataset_parts(config.dataset)
    repeats = [i.repeats * parts[i.source].settings.repeats for i in items]
    sources = max((i.source for i in items), default=0) + 1
    if sources == 1:
        return SampleSchedule(repeats, t.seed, t.batch_size, groups)
    members = [[n for n, i in enumerate(items) if i.source == s] for s in range(sources)]
    weights = [p.weight for p in parts[:sources]]
    # A dataset left empty (every image held out) is never drawn.
    kept = [(m, w) for m, w in zip(members, weights) if m]
    return MixedSchedule([m for m, _ in kept], repeats, [w for _, w in kept], t.seed, t.batch_size, groups)
