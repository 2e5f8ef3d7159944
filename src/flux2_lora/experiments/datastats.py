"""What a dataset looks like to the auto-tuner (pure: a :class:`~flux2_lora.data.scan.DatasetReport` in,
numbers out): image count, sizes, aspect spread, caption lengths, the trigger word running through the
captions, and which words of a character or a style the captions use."""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from flux2_lora.data.scan import DatasetReport

NOT_SQUARE = math.log(1.1)  # an aspect more than 10% off 1:1
TRIGGER_SHARE = 0.5  # a token in at least half the captions can be the trigger


def _word_set(text: str) -> frozenset[str]:
    return frozenset(text.split())


_WORD = re.compile(r"[a-z0-9][a-z0-9_'-]*")
KIND_WORDS: dict[str, frozenset[str]] = {
    "character": _word_set(
        "person man woman girl boy face portrait people character he she his her him selfie smiling hair "
        "wearing child lady guy"
    ),
    "style": _word_set(
        "style painting illustration art artwork drawing drawn sketch watercolor oil anime rendering "
        "brushstrokes painted lineart palette aesthetic"
    ),
}
# Words too common to be a trigger (the kind words too): English function words and caption vocabulary.
COMMON = _word_set(
    "a an the of in on at with and or to from by for is are was be as it its this that these those "
    "photo picture image shot close up closeup view front side back left right top bottom background "
    "white black red blue green yellow orange purple pink brown gray grey light dark bright color "
    "colors colored small large big tall short young old new one two three some very stripes stripe "
    "standing sitting looking wearing holding outdoors indoors room street sky water"
) | frozenset().union(*KIND_WORDS.values())


@dataclass
class DatasetStats:
    root: str
    num_images: int
    num_found: int
    width_median: int
    height_median: int
    short_side_median: int
    short_side_min: int
    short_side_max: int
    area_side_median: int  # √(width × height): the side of the square of the same area
    aspect_min: float
    aspect_max: float
    not_square: int
    captioned: int
    caption_words_median: float
    caption_words_min: int
    caption_words_max: int
    trigger: str | None
    trigger_count: int
    kind_scores: dict[str, float] = field(default_factory=dict)
    kind_words: dict[str, list[str]] = field(default_factory=dict)  # the kind words found, most used first
    subfolder_repeats: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _words(caption: str) -> list[str]:
    return _WORD.findall(caption.lower())


# Letter pairs English words do not have: tokens like ohwx or zxq are made up to be triggers.
_MADE_UP_PAIRS = _word_set("wx xq zx qx xz vx kx jx xj qz zq wq qw xk vq jq qj fq qf xw zj jz")


def looks_made_up(word: str) -> bool:
    """sks, ohwx, zxq, tok2: no vowel, a digit, or a letter pair no English word has."""
    return (
        not any(v in word for v in "aeiouy")
        or any(ch.isdigit() for ch in word)
        or any(word[i : i + 2] in _MADE_UP_PAIRS for i in range(len(word) - 1))
    )


def find_trigger(captions: list[str], given: str = "") -> tuple[str | None, int]:
    """(trigger word, captions that have it): the given word (a caption with a [trigger] placeholder has
    it too), else a token in at least half the captions that is not a common word, made-up-looking ones
    (sks, ohwx) first, then the most frequent, then the shortest."""
    texts = [c for c in captions if c.strip()]
    if given.strip():
        word = given.strip().lower()
        return given.strip(), sum(word in _words(c) or "[trigger]" in c for c in texts)
    if not texts:
        return None, 0
    freq = Counter(w for c in texts for w in set(_words(c)))
    candidates = [
        w for w, n in freq.items() if n >= TRIGGER_SHARE * len(texts) and w not in COMMON and not w.isdigit()
    ]
    if not candidates:
        return None, 0
    word = max(candidates, key=lambda w: (looks_made_up(w), freq[w], -len(w), w))
    return word, freq[word]


def dataset_stats(report: DatasetReport, trigger_word: str = "") -> DatasetStats:
    items = report.items
    if not items:
        raise ValueError(f"dataset.path: no usable images in {report.root}")
    sizes = [(i.width, i.height) for i in items]
    shorts = [min(w, h) for w, h in sizes]
    aspects = [w / h for w, h in sizes]
    captions = [i.caption for i in items if i.caption_source == "file"]
    lengths = [len(_words(c)) for c in captions] or [0]
    trigger, count = find_trigger(captions, trigger_word)
    docs = [set(_words(c)) for c in captions]
    scores = {
        k: (sum(bool(d & words) for d in docs) / len(docs) if docs else 0.0)
        for k, words in KIND_WORDS.items()
    }
    found = {
        k: [w for w, _ in Counter(w for d in docs for w in d & words).most_common(4)]
        for k, words in KIND_WORDS.items()
    }
    folders = sorted(
        {p.name for i in items for p in i.path.relative_to(report.root).parents if re.match(r"^\d+_", p.name)}
    )
    return DatasetStats(
        root=str(report.root),
        num_images=len(items),
        num_found=report.num_images_found,
        width_median=int(statistics.median(w for w, _ in sizes)),
        height_median=int(statistics.median(h for _, h in sizes)),
        short_side_median=int(statistics.median(shorts)),
        short_side_min=min(shorts),
        short_side_max=max(shorts),
        area_side_median=int(statistics.median(math.sqrt(w * h) for w, h in sizes)),
        aspect_min=round(min(aspects), 3),
        aspect_max=round(max(aspects), 3),
        not_square=sum(abs(math.log(a)) > NOT_SQUARE for a in aspects),
        captioned=len(captions),
        caption_words_median=float(statistics.median(lengths)),
        caption_words_min=min(lengths),
        caption_words_max=max(lengths),
        trigger=trigger,
        trigger_count=count,
        kind_scores={k: round(v, 3) for k, v in scores.items()},
        kind_words=found,
        subfolder_repeats=folders,
    )
