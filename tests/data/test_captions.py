"""Trigger word, tag shuffling and the trigger report."""

from __future__ import annotations

import random

from flux2_lora.data.captions import apply_trigger, shuffle_tags, trigger_findings


def test_trigger_placeholder_prefix_and_present() -> None:
    assert apply_trigger("a photo of [trigger] dog", "sks") == "a photo of sks dog"
    assert apply_trigger("a dog on grass", "sks") == "sks, a dog on grass"
    assert apply_trigger("sks dog", "sks") == "sks dog"
    assert apply_trigger("asks dog", "sks") == "sks, asks dog"  # whole words only
    assert apply_trigger("", "sks") == "sks"
    assert apply_trigger("a dog", "") == "a dog"


def test_shuffle_keeps_the_first_tags() -> None:
    caption = "sks, red, blue, green, yellow, purple"
    orders = {shuffle_tags(caption, 1, random.Random(i)) for i in range(20)}
    assert len(orders) > 5 and all(o.startswith("sks, ") for o in orders)
    assert all(sorted(o.split(", ")) == sorted(caption.split(", ")) for o in orders)
    assert shuffle_tags(caption, 6, random.Random(0)) == caption


def test_trigger_findings() -> None:
    none = trigger_findings([("a.txt", "a dog"), ("b.txt", "a cat")], "sks")
    assert len(none) == 1 and "in no caption" in none[0][2]
    some = trigger_findings([("a.txt", "sks dog"), ("b.txt", "a cat")], "sks")
    assert [f for f, _, _ in some] == ["b.txt"]
    orphan = trigger_findings([("a.txt", "[trigger] dog")], "")
    assert orphan[0][1] == "error" and "placeholder" in orphan[0][2]
    assert trigger_findings([("a.txt", "[trigger] dog")], "sks") == []
