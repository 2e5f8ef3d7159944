"""Dataset folder scanning: every bad input becomes a Problem naming its file, never an exception."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from flux2_lora.data.scan import (
    IMAGE_EXTENSIONS,
    DatasetError,
    DatasetReport,
    require_usable,
    scan_dataset,
)


def img(
    path: Path,
    size: tuple[int, int] = (32, 32),
    mode: str = "RGB",
    color: float | tuple[int, ...] | str | None = None,
    **save: Any,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if color is not None else 128).save(path, **save)
    return path


def txt(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width×height but holds no pixel data (a bomb needs no payload)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )
    return path


def problems(report: DatasetReport) -> dict[str, list[tuple[str, str]]]:
    return {f: [(p.severity, p.message) for p in ps] for f, ps in report.problems_by_file().items()}


# ----------------------------------------------------------------------------- the good path


def test_pairs_images_with_captions_recursively_in_sorted_order(tmp_path: Path) -> None:
    img(tmp_path / "b.png", (40, 30))
    txt(tmp_path / "b.txt", "a photo of b")
    img(tmp_path / "a" / "z.jpg")
    txt(tmp_path / "a" / "z.txt", "zed")
    img(tmp_path / "a" / "c.webp")
    txt(tmp_path / "a" / "c.txt", "see")
    img(tmp_path / "d.BMP")
    txt(tmp_path / "d.txt", "dee")
    report = scan_dataset(tmp_path)
    assert [i.path.relative_to(tmp_path).as_posix() for i in report.items] == [
        "a/c.webp",
        "a/z.jpg",
        "b.png",
        "d.BMP",
    ]
    assert [i.caption for i in report.items] == ["see", "zed", "a photo of b", "dee"]
    assert all(i.caption_source == "file" for i in report.items)
    assert (report.items[2].width, report.items[2].height) == (40, 30)
    assert report.num_images_found == 4 and report.num_captions == 4
    assert report.num_missing_captions == 0 and report.num_unused_captions == 0
    assert report.problems == []
    require_usable(report)


def test_hidden_files_macos_junk_and_other_files_are_ignored(tmp_path: Path) -> None:
    img(tmp_path / "a.png")
    txt(tmp_path / "a.txt", "ok")
    txt(tmp_path / ".DS_Store", b"\x00\x01junk")
    txt(tmp_path / "._a.png", b"AppleDouble resource fork, not a png")
    txt(tmp_path / "__MACOSX" / "._a.png", b"junk")
    txt(tmp_path / "__MACOSX" / "a.txt", "junk caption")
    img(tmp_path / ".hidden" / "secret.png")
    txt(tmp_path / "notes.md", "# my dataset")
    txt(tmp_path / "meta.json", "{}")
    report = scan_dataset(tmp_path)
    assert [i.path.name for i in report.items] == ["a.png"]
    assert report.num_images_found == 1 and report.num_captions == 1
    assert report.problems == []


def test_custom_caption_extension(tmp_path: Path) -> None:
    img(tmp_path / "a.png")
    txt(tmp_path / "a.caption", "from caption file")
    txt(tmp_path / "a.txt", "not this one")
    report = scan_dataset(tmp_path, caption_extension=".caption")
    assert report.items[0].caption == "from caption file"
    assert report.num_captions == 1 and report.problems == []


# ----------------------------------------------------------------------------- bad images


def test_corrupt_and_truncated_images_are_errors_and_skipped(tmp_path: Path) -> None:
    good = img(tmp_path / "good.png")
    png = img(tmp_path / "trunc.png", (64, 64), color=None)
    png.write_bytes(png.read_bytes()[: len(png.read_bytes()) // 2])
    # A noisy JPEG so the cut lands inside the entropy-coded data, not in the headers.
    noise = Image.effect_noise((128, 128), 64).convert("RGB")
    noise.save(tmp_path / "trunc.jpg", quality=95)
    jpg = (tmp_path / "trunc.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(jpg[: len(jpg) // 2])
    report = scan_dataset(tmp_path, default_caption="x")
    assert [i.path for i in report.items] == [good]
    found = problems(report)
    for name in ("trunc.png", "trunc.jpg"):
        assert any(sev == "error" and "corrupt or truncated" in msg for sev, msg in found[name]), found[name]


def test_non_image_with_image_extension_is_an_error(tmp_path: Path) -> None:
    txt(tmp_path / "fake.jpg", "this is text, not a JPEG")
    txt(tmp_path / "fake.txt", "caption")
    report = scan_dataset(tmp_path)
    assert report.items == []
    assert problems(report) == {
        "fake.jpg": [("error", "not an image (the file content is not a recognised image format)")]
    }
    assert report.num_unused_captions == 0  # its caption has an image, just a broken one


def test_image_above_max_pixels_is_rejected_from_the_header(tmp_path: Path) -> None:
    img(tmp_path / "big.png", (100, 50))
    report = scan_dataset(tmp_path, default_caption="x", max_image_pixels=100 * 49)
    assert report.items == []
    (sev, msg), *_ = problems(report)["big.png"]
    assert sev == "error" and "100x50" in msg and "decompression bomb" in msg


def test_decompression_bombs_are_caught_without_decoding(tmp_path: Path) -> None:
    # Above PIL's hard limit (DecompressionBombError) and between its warning limit and ours.
    png_header_only(tmp_path / "huge.png", 30000, 30000)
    png_header_only(tmp_path / "large.png", 10000, 9500)
    report = scan_dataset(tmp_path, default_caption="x")
    found = problems(report)
    assert report.items == []
    # Decoding these would fail as "truncated"; a bomb message proves only the header was read.
    assert found["huge.png"][0][0] == "error" and "decompression bomb" in found["huge.png"][0][1]
    assert found["large.png"][0][0] == "error" and "10000x9500" in found["large.png"][0][1]


def test_small_image_warns_about_upscaling_but_is_kept(tmp_path: Path) -> None:
    img(tmp_path / "small.png", (300, 200))
    img(tmp_path / "big.png", (600, 512))
    report = scan_dataset(tmp_path, default_caption="x", resolution=512)
    assert len(report.items) == 2
    found = problems(report)
    assert ("warning", "smaller than the training resolution 512: will be upscaled from 300x200") in found[
        "small.png"
    ]
    assert not any("upscaled" in m for _, m in found.get("big.png", []))
    assert not any("upscaled" in p.message for p in scan_dataset(tmp_path, default_caption="x").problems)


def test_exif_orientation_swaps_reported_size(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90° to display
    img(tmp_path / "portrait.jpg", (40, 20), exif=exif)
    exif[0x0112] = 3  # upside down: size unchanged
    img(tmp_path / "flipped.jpg", (40, 20), exif=exif)
    report = scan_dataset(tmp_path, default_caption="x")
    sizes = {i.path.name: (i.width, i.height) for i in report.items}
    assert sizes == {"flipped.jpg": (40, 20), "portrait.jpg": (20, 40)}
    assert all("caption" in p.message for p in report.problems)  # nothing about the orientation


def test_cmyk_16bit_and_alpha_images(tmp_path: Path) -> None:
    img(tmp_path / "cmyk.jpg", mode="CMYK", color=(0, 255, 255, 0))
    img(tmp_path / "deep.png", mode="I;16", color=40000)
    img(tmp_path / "gray.png", mode="L")
    img(tmp_path / "opaque.png", mode="RGBA", color=(1, 2, 3, 255))
    cut = Image.new("RGBA", (32, 32), (10, 20, 30, 255))
    cut.putpixel((0, 0), (0, 0, 0, 0))
    cut.save(tmp_path / "cutout.png")
    pal = Image.new("P", (32, 32), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0])
    pal.save(tmp_path / "palette.png", transparency=1)
    report = scan_dataset(tmp_path, default_caption="x")
    assert len(report.items) == 6
    alpha = {
        f for f, ps in problems(report).items() for _, m in ps if "transparent areas composited on white" in m
    }
    assert alpha == {"cutout.png", "palette.png"}  # an all-opaque alpha channel is not worth a warning


# ----------------------------------------------------------------------------- captions


def test_missing_caption_uses_default_or_empty(tmp_path: Path) -> None:
    img(tmp_path / "a.png")
    with_default = scan_dataset(tmp_path, default_caption="  a photo of sks  ")
    (item,) = with_default.items
    assert (item.caption, item.caption_source) == ("a photo of sks", "default")
    assert with_default.num_missing_captions == 1
    assert problems(with_default) == {
        "a.png": [("warning", "no caption file (a.txt); using default caption 'a photo of sks'")]
    }
    without = scan_dataset(tmp_path)
    (item,) = without.items
    assert (item.caption, item.caption_source) == ("", "default")
    ((sev, msg),) = problems(without)["a.png"]
    assert sev == "warning" and "no caption file (a.txt)" in msg and "default_caption" in msg


def test_empty_caption_warns_and_falls_back_to_default(tmp_path: Path) -> None:
    img(tmp_path / "a.png")
    txt(tmp_path / "a.txt", " \r\n\t\n")
    report = scan_dataset(tmp_path, default_caption="sks")
    (item,) = report.items
    assert (item.caption, item.caption_source) == ("sks", "default")
    assert problems(report) == {"a.txt": [("warning", "caption file is empty; using default caption 'sks'")]}


def test_non_utf8_caption_is_an_error_naming_the_file(tmp_path: Path) -> None:
    img(tmp_path / "cafe.png")
    txt(tmp_path / "cafe.txt", "un caf\xe9".encode("latin-1"))
    img(tmp_path / "wide.png")
    txt(tmp_path / "wide.txt", "hello".encode("utf-16"))
    report = scan_dataset(tmp_path)
    assert report.items == []
    ((sev, msg),) = problems(report)["cafe.txt"]
    assert sev == "error" and "not valid UTF-8" in msg and "0xe9" in msg and "re-save it as UTF-8" in msg
    assert "skipping cafe.png" in msg
    ((sev, msg),) = problems(report)["wide.txt"]
    assert sev == "error" and "UTF-16" in msg and "UTF-8" in msg


def test_bom_crlf_and_trailing_whitespace_are_normalised(tmp_path: Path) -> None:
    img(tmp_path / "a.png")
    txt(tmp_path / "a.txt", b"\xef\xbb\xbfa photo of sks  \r\nin the snow\t\r\n\r\n")
    img(tmp_path / "b.png")
    txt(tmp_path / "b.txt", "old mac\rline endings ")
    report = scan_dataset(tmp_path)
    assert [i.caption for i in report.items] == ["a photo of sks\nin the snow", "old mac\nline endings"]
    assert report.problems == []


def test_caption_without_image_is_counted_as_unused(tmp_path: Path) -> None:
    img(tmp_path / "a.png")
    txt(tmp_path / "a.txt", "used")
    txt(tmp_path / "sub" / "orphan.txt", "no image")
    report = scan_dataset(tmp_path)
    assert report.num_captions == 2 and report.num_unused_captions == 1
    ((sev, msg),) = problems(report)["sub/orphan.txt"]
    assert sev == "warning" and "caption file without an image" in msg and "orphan.png" in msg


# ----------------------------------------------------------------------------- the folder and the report


def test_empty_folder_reports_nothing_and_require_usable_explains(tmp_path: Path) -> None:
    txt(tmp_path / "readme.md", "no images here")
    report = scan_dataset(tmp_path)
    assert report.items == [] and report.num_images_found == 0
    with pytest.raises(DatasetError) as e:
        require_usable(report)
    assert (
        str(e.value)
        == f"dataset.path: no images found in {tmp_path} (looked for {', '.join(IMAGE_EXTENSIONS)})"
    )


def test_require_usable_lists_the_problems_when_every_image_is_bad(tmp_path: Path) -> None:
    for i in range(7):
        txt(tmp_path / f"bad{i}.png", "not a png")
    with pytest.raises(DatasetError) as e:
        require_usable(scan_dataset(tmp_path))
    msg = str(e.value)
    assert msg.startswith(f"dataset.path: no usable images in {tmp_path}; problems: bad0.png: not an image")
    assert "bad4.png" in msg and "bad5.png" not in msg and "and 2 more" in msg


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_root_that_is_not_a_folder(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "nope"
    if kind == "file":
        txt(root, "x")
    with pytest.raises(DatasetError, match=f"dataset.path: {root} (does not exist|is not a folder)"):
        scan_dataset(root)


def test_report_to_dict_and_format(tmp_path: Path) -> None:
    img(tmp_path / "a.png")
    txt(tmp_path / "a.txt", "ok")
    txt(tmp_path / "broken.jpg", "nope")
    img(tmp_path / "nocap.png")
    txt(tmp_path / "orphan.txt", "x")
    report = scan_dataset(tmp_path)
    assert [p.file for p in report.problems] == sorted(p.file for p in report.problems)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["num_images_found"] == 3 and d["num_items"] == 2
    assert (d["num_captions"], d["num_missing_captions"], d["num_unused_captions"]) == (2, 2, 1)
    assert (d["num_errors"], d["num_warnings"]) == (1, 3)
    assert set(d["problems"]) == {"broken.jpg", "nocap.png", "orphan.txt"}
    assert d["problems"]["broken.jpg"][0]["severity"] == "error"
    text = report.format()
    assert "images found:      3" in text and "usable images:     2" in text
    assert "(1 error — skipped, 3 warnings)" in text
    assert "  broken.jpg\n    error: not an image" in text
    assert text.index("broken.jpg") < text.index("nocap.png") < text.index("orphan.txt")


def test_scan_never_raises_on_a_bad_file(tmp_path: Path) -> None:
    """Odd files of every kind together: the scan finishes and keeps the good image."""
    img(tmp_path / "good.png")
    txt(tmp_path / "zero.png", b"")
    txt(tmp_path / "garbage.webp", bytes(range(256)) * 10)
    txt(tmp_path / "header.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")
    txt(tmp_path / "bmp.bmp", b"BM" + b"\xff" * 60)
    (tmp_path / "dir.png").mkdir()  # a folder with an image name is not a file to open
    report = scan_dataset(tmp_path, default_caption="x")
    assert [i.path.name for i in report.items] == ["good.png"]
    errors = {p.file for p in report.errors}
    assert errors == {"zero.png", "garbage.webp", "header.jpg", "bmp.bmp"}


# ----------------------------------------------------------------------------- hostile folders
def test_symlinks_leaving_the_dataset_are_reported_and_never_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    secret = txt(outside / "secret.txt", "root:x:0:0 the password file")
    foreign = img(outside / "foreign.png")
    ds = tmp_path / "ds"
    img(ds / "a.png")
    (ds / "a.txt").symlink_to(secret)  # a caption that is another file of the machine
    (ds / "b.png").symlink_to(foreign)
    img(ds / "c.png")
    (ds / "c.txt").symlink_to(txt(ds / "sub" / "real.txt", "a caption inside the dataset"))
    (ds / "linked-folder").symlink_to(outside, target_is_directory=True)
    report = scan_dataset(ds)
    found = problems(report)
    assert found["a.txt"] == [
        ("error", "is a symbolic link that leads outside the dataset folder; not read; skipping a.png")
    ]
    assert found["b.png"][0] == (
        "error",
        "is a symbolic link that leads outside the dataset folder; not read",
    )
    assert [(i.path.name, i.caption) for i in report.items] == [("c.png", "a caption inside the dataset")]
    assert "password" not in json.dumps(report.to_dict()) + report.format()
    assert not any("foreign" in f or "secret" in f for f in found)  # the linked folder is not entered


def test_a_pipe_named_like_an_image_is_not_opened(tmp_path: Path) -> None:
    import os

    img(tmp_path / "a.png")
    os.mkfifo(tmp_path / "b.png")  # opening it would block the scan for ever
    os.mkfifo(tmp_path / "a.txt")
    found = problems(scan_dataset(tmp_path))
    assert found["b.png"][0] == ("error", "is not a regular file (a pipe, device or folder); not read")
    assert found["a.txt"][0][1].startswith("is not a regular file")


@pytest.mark.parametrize("marker", ["status.json", "config.yaml+train.log"])
def test_the_outputs_of_a_run_inside_a_dataset_are_not_scanned(tmp_path: Path, marker: str) -> None:
    img(tmp_path / "photo.png")
    run = tmp_path / "runs" / "r1"
    for name in marker.split("+"):
        txt(run / name, "{}")
    for folder in ("samples", "checkpoints/checkpoint-2", "previous/20250101", "tensorboard"):
        img(run / folder / "x.png")
    img(tmp_path / "samples" / "kept.png")  # not a run directory: an ordinary subfolder
    report = scan_dataset(tmp_path, default_caption="x")
    assert sorted(i.path.relative_to(tmp_path).as_posix() for i in report.items) == [
        "photo.png",
        "samples/kept.png",
    ]
    skipped = {f for f, ps in problems(report).items() if ps[0][1].startswith("output of a training run")}
    assert skipped == {f"runs/r1/{d}/" for d in ("checkpoints", "previous", "samples", "tensorboard")}


def test_newline_and_undecodable_file_names_are_escaped(tmp_path: Path) -> None:
    import os

    img(tmp_path / "new\nline.png")
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")
    with open(raw, "wb") as f:
        f.write(b"not an image")
    report = scan_dataset(tmp_path)
    files = set(problems(report))
    assert files == {"new\\nline.png", "caf\\xe9.png"}
    text = report.format()
    assert "new\\nline.png" in text and "\n  new\nline" not in text
    text.encode("utf-8")  # printable on a strict UTF-8 console
    json.dumps(report.to_dict(), ensure_ascii=False).encode("utf-8")
