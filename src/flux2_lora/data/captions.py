"""Caption handling (pure): trigger word, tag shuffling, and the dataset check's trigger report."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

PLACEHOLDER = "[trigger]"


def apply_trigger(caption: str, trigger: str) -> str:
    """Replace the [trigger] placeholder, or prefix the trigger when the caption lacks it."""
    trigger = trigger.strip()
    if not trigger:
        return caption
    if PLACEHOLDER in caption:
        return caption.replace(PLACEHOLDER, trigger)
    if re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", caption):
        return caption
    return f"{trigger}, {caption}" if caption.strip() else trigger


def shuffle_tags(caption: str, keep: int, rng: random.Random) -> str:
    """Shuffle comma-separated tags, keeping the first ``keep`` in place (e.g. the trigger)."""
    tags = [t.strip() for t in caption.split(",")]
    tags = [t for t in tags if t]
    head, tail = tags[:keep], tags[keep:]
    rng.shuffle(tail)
    return ", ".join(head + tail)


def trigger_findings(captions: Iterable[tuple[str, str]], trigger: str) -> list[tuple[str, str, str]]:
    """(file, severity, message) about the trigger word, for ``(file, caption)`` pairs."""
    trigger = trigger.strip()
    pairs = list(captions)
    out: list[tuple[str, str, str]] = []
    with_placeholder = [f for f, c in pairs if PLACEHOLDER in c]
    if not trigger:
        for f in with_placeholder:
            out.append(
                (f, "error", f"caption has a {PLACEHOLDER} placeholder but dataset.trigger_word is empty")
            )
        return out
    pattern = re.compile(rf"(?<!\w){re.escape(trigger)}(?!\w)")
    missing = [f for f, c in pairs if PLACEHOLDER not in c and not pattern.search(c)]
    if pairs and len(missing) == len(pairs):
        out.append(
            (
                "",
                "warning",
                f"trigger word {trigger!r} is in no caption; it will be prefixed to every caption",
            )
        )
    else:
        for f in missing:
            out.append((f, "warning", f"caption lacks the trigger word {trigger!r}; it will be prefixed"))
    return out
