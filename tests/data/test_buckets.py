"""Aspect buckets: about the target area, multiples of the step, cropping only the rounding."""

from __future__ import annotations

import pytest

from flux2_lora.data.buckets import bucket_for, bucket_table, crop_after_scaling


@pytest.mark.parametrize(
    "size", [(1024, 1024), (768, 1344), (1344, 768), (900, 1600), (3000, 2000), (500, 510)]
)
@pytest.mark.parametrize("step", [16, 64])
def test_bucket_shape_area_and_crop(size: tuple[int, int], step: int) -> None:
    w, h = size
    bw, bh = bucket_for(w, h, 1024, step)
    assert bw % step == 0 and bh % step == 0 and bw % 16 == 0 and bh % 16 == 0
    assert bw * bh <= 1024 * 1024 and bw * bh > (1024 - step) ** 2 * 0.85
    cx, cy = crop_after_scaling(w, h, (bw, bh))
    assert 0 <= cx < step + 1 and 0 <= cy < step + 1  # only the bucket's rounding is cropped
    assert (bw > bh) == (w > h) or abs(w - h) < step


def test_table_groups_by_bucket() -> None:
    table = bucket_table([(768, 1344), (760, 1340), (1344, 768), (1000, 1000)], 1024, 64)
    assert sum(table.values()) == 4 and len(table) == 3
