"""open_dataset: the one way from dataset.path ('demo', a folder, a .zip) to the folder and its scan."""

from __future__ import annotations

from pathlib import Path

import pytest

from flux2_lora.data import DatasetError, open_dataset
from flux2_lora.data.demo import DEMO_NUM_IMAGES, demo_dataset_dir
from flux2_lora.variants import is_demo

from .test_archive import good_entries, make_zip, png_bytes


@pytest.mark.parametrize(
    ("path", "demo"), [("demo", True), (" Demo\n", True), ("DEMO", True), ("demos", False), ("./demo", False)]
)
def test_is_demo(path: str, demo: bool) -> None:
    assert is_demo(path) is demo


def test_demo_is_the_generated_dataset(tmp_path: Path) -> None:
    root, report = open_dataset(" demo ", tmp_path / "work")
    assert root == demo_dataset_dir()
    assert len(report.items) == DEMO_NUM_IMAGES
    assert not (tmp_path / "work").exists()  # nothing unpacked for the demo


def test_folder_is_scanned_where_it_is(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes())
    (tmp_path / "a.caption").write_text("a photo of sks")
    root, report = open_dataset(tmp_path, tmp_path / "work", caption_extension=".caption")
    assert root == tmp_path and not (tmp_path / "work").exists()
    assert [(i.path.name, i.caption) for i in report.items] == [("a.png", "a photo of sks")]


def test_zip_is_unpacked_under_the_work_folder(tmp_path: Path) -> None:
    zp = make_zip(tmp_path / "data.zip", good_entries())
    root, report = open_dataset(str(zp), tmp_path / "work", resolution=1024)
    assert root.is_relative_to(tmp_path / "work")
    assert [i.caption for i in report.items] == ["a photo of sks"]
    assert any("upscaled" in p.message for p in report.problems)  # the 16 px image, below 1024


@pytest.mark.parametrize("name", ["missing", "photo.png"])
def test_neither_folder_nor_zip_is_refused_naming_the_field(tmp_path: Path, name: str) -> None:
    (tmp_path / "photo.png").write_bytes(png_bytes())
    with pytest.raises(DatasetError, match=r"^dataset\.path: "):
        open_dataset(tmp_path / name, tmp_path / "work")
