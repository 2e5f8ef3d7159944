"""Image loading: any mode and orientation becomes a square float32 RGB tensor in [-1, 1]."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from flux2_lora.data.scan import DatasetError
from flux2_lora.training.images import load_training_image, to_rgb

RED, BLUE, WHITE = (1.0, -1.0, -1.0), (-1.0, -1.0, 1.0), (1.0, 1.0, 1.0)


def load(
    path: Path, resolution: int = 16, *, center_crop: bool = True, flip: bool = False, seed: int = 0
) -> torch.Tensor:
    return load_training_image(
        path, resolution, center_crop=center_crop, flip=flip, crop_rng=random.Random(seed)
    )


def pixel(t: torch.Tensor, y: int, x: int) -> tuple[float, ...]:
    return tuple(round(v, 2) for v in t[:, y, x].tolist())


def close(a: tuple[float, ...], b: tuple[float, ...], tol: float = 0.1) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def halves(path: Path, size: tuple[int, int] = (40, 20), **save: Any) -> Path:
    """Left half red, right half blue."""
    im = Image.new("RGB", size, (255, 0, 0))
    im.paste((0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    im.save(path, **save)
    return path


def gradient(path: Path, size: tuple[int, int]) -> Path:
    im = Image.new("RGB", size)
    im.putdata([(x % 256, y % 256, (x * 7 + y) % 256) for y in range(size[1]) for x in range(size[0])])
    im.save(path)
    return path


def test_output_shape_dtype_and_range(tmp_path: Path) -> None:
    halves(tmp_path / "a.png", (96, 64))
    t = load(tmp_path / "a.png", 32)
    assert t.shape == (3, 32, 32) and t.dtype == torch.float32 and t.is_contiguous()
    assert t.min() >= -1.0 and t.max() <= 1.0
    assert close(pixel(t, 16, 2), RED) and close(pixel(t, 16, 29), BLUE)


@pytest.mark.parametrize("size", [(8, 6), (31, 17), (100, 33), (17, 300), (1000, 999)])
def test_short_side_resized_then_cropped_square(tmp_path: Path, size: tuple[int, int]) -> None:
    gradient(tmp_path / "g.png", size)
    for center in (True, False):
        assert load(tmp_path / "g.png", 16, center_crop=center).shape == (3, 16, 16)


def test_center_crop_keeps_the_middle(tmp_path: Path) -> None:
    im = Image.new("RGB", (48, 16), (255, 0, 0))
    im.paste((0, 0, 255), (16, 0, 32, 16))  # blue middle third
    im.save(tmp_path / "m.png")
    t = load(tmp_path / "m.png", 16, seed=1)
    assert all(close(pixel(t, y, x), BLUE) for y in (0, 15) for x in (0, 8, 15))


def test_random_crop_follows_the_rng(tmp_path: Path) -> None:
    gradient(tmp_path / "wide.png", (200, 20))
    crops = [load(tmp_path / "wide.png", 16, center_crop=False, seed=s) for s in range(6)]
    assert torch.equal(crops[0], load(tmp_path / "wide.png", 16, center_crop=False, seed=0))  # deterministic
    assert len({tuple(c[0, 0, :].tolist()) for c in crops}) > 1  # different seeds, different positions
    centered = [load(tmp_path / "wide.png", 16, center_crop=True, seed=s) for s in range(3)]
    assert all(torch.equal(centered[0], c) for c in centered)  # the rng does not move a center crop


def test_flip_mirrors_horizontally(tmp_path: Path) -> None:
    halves(tmp_path / "a.png", (32, 32))
    plain, flipped = load(tmp_path / "a.png"), load(tmp_path / "a.png", flip=True)
    assert torch.equal(flipped, plain.flip(-1))
    assert close(pixel(flipped, 8, 1), BLUE)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: the left (red) half ends up on top
    halves(tmp_path / "p.jpg", (40, 20), exif=exif, quality=95)
    t = load(tmp_path / "p.jpg", 16)
    assert close(pixel(t, 1, 8), RED, 0.15) and close(pixel(t, 14, 8), BLUE, 0.15)


def test_cmyk_is_converted_to_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    assert close(pixel(load(tmp_path / "c.jpg"), 8, 8), RED, 0.05)


def test_16_bit_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    Image.new("I;16", (20, 20), 40000).save(tmp_path / "deep.png")
    expected = round(40000 / 256) / 127.5 - 1  # ≈ 0.22 gray; a plain convert would clip to white
    assert close(pixel(load(tmp_path / "deep.png"), 5, 5), (expected,) * 3, 0.01)
    assert to_rgb(Image.new("I", (4, 4), 65535)).getpixel((0, 0)) == (255, 255, 255)


def test_alpha_is_composited_on_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (16, 16), (0, 0, 255, 255))
    im.paste((0, 0, 0, 0), (0, 0, 8, 16))  # left half fully transparent (black underneath)
    im.save(tmp_path / "cut.png")
    t = load(tmp_path / "cut.png")
    assert close(pixel(t, 8, 2), WHITE) and close(pixel(t, 8, 13), BLUE)
    half = Image.new("LA", (16, 16), (0, 128))  # black at 50% over white → mid gray
    half.save(tmp_path / "la.png")
    assert close(pixel(load(tmp_path / "la.png"), 8, 8), (0.0, 0.0, 0.0), 0.02)


def test_palette_transparency_and_grayscale(tmp_path: Path) -> None:
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([255, 0, 0, 0, 0, 0])
    pal.paste(0, (0, 0, 8, 16))
    pal.save(tmp_path / "pal.png", transparency=1)  # index 1 (black) is transparent
    t = load(tmp_path / "pal.png")
    assert close(pixel(t, 8, 2), RED) and close(pixel(t, 8, 13), WHITE)
    Image.new("L", (16, 16), 0).save(tmp_path / "gray.png")
    Image.new("1", (16, 16), 1).save(tmp_path / "bw.png")
    assert close(pixel(load(tmp_path / "gray.png"), 3, 3), (-1.0, -1.0, -1.0))
    assert close(pixel(load(tmp_path / "bw.png"), 3, 3), WHITE)


def test_unreadable_image_raises_dataset_error_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(DatasetError, match=f"{bad}: cannot load the image"):
        load(bad)
