"""Caption previews of the dataset section through the UI's API (gradio_client): a page of thumbnails with
their captions, and Save writing the edited captions beside their images, and nothing else: a request
that names anything but a listed image, or a caption that is not one, is refused whole and named."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

if TYPE_CHECKING:
    from gradio_client import Client

pytest.importorskip("gradio_client")


def _dataset(root: Path, n: int = 3) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (640, 480), (20 * i, 30, 200)).save(root / f"img{i:02d}.png")
    (root / "img00.txt").write_text("my own caption\n")
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _preview(client: Client, ds: Path, page: int = 0, ext: str = ".txt") -> dict[str, Any]:
    return dict(client.predict(str(ds), ext, page, api_name="/caption_preview"))


def _save(client: Client, ds: Path, edits: dict[str, str], ext: str = ".txt") -> dict[str, Any]:
    return dict(client.predict(str(ds), ext, edits, api_name="/caption_save"))


def test_a_page_of_thumbnails_with_their_captions(client: Client, ui_data: Path, ui_runs: Path) -> None:
    ds = _dataset(ui_data / "prev-pages", n=14)
    first = _preview(client, ds)
    assert first["ok"] and (first["total"], first["pages"], first["page"]) == (14, 2, 0), first
    assert [i["image"] for i in first["items"]] == [f"img{i:02d}.png" for i in range(12)]
    assert (
        first["items"][0]["caption"] == "my own caption" and first["items"][0]["caption_file"] == "img00.txt"
    )
    assert first["items"][1]["caption"] == "" and first["items"][1]["caption_file"] == "img01.txt"
    thumb = Path(first["items"][0]["thumb"])
    assert thumb.is_file() and ui_runs.resolve() in thumb.resolve().parents  # served from the runs folder
    with Image.open(thumb) as im:
        assert max(im.size) == 256
    last = _preview(client, ds, page=5)  # beyond the last page: the last page
    assert last["page"] == 1 and [i["image"] for i in last["items"]] == ["img12.png", "img13.png"]
    assert sorted(p.name for p in ds.iterdir()) == sorted(
        [f"img{i:02d}.png" for i in range(14)] + ["img00.txt"]
    )


def test_save_writes_the_edited_captions_beside_their_images(client: Client, ui_data: Path) -> None:
    ds = _dataset(ui_data / "prev-save")
    (ds / "img02.txt").write_bytes(b"\xff\xfe broken")  # UTF-16: shown with its error, replaced by a save
    shown = {i["image"]: i for i in _preview(client, ds)["items"]}
    assert shown["img02.png"]["error"].startswith("img02.txt: ") and "UTF-16" in shown["img02.png"]["error"]
    r = _save(
        client,
        ds,
        {"img00.png": "my own caption", "img01.png": "a blue square\r\n", "img02.png": "fixed  "},
    )
    assert r["ok"] and sorted(r["written"]) == ["img01.txt", "img02.txt"] and r["unchanged"] == 1, r
    assert (ds / "img00.txt").read_text() == "my own caption\n"  # unchanged: not rewritten
    assert (ds / "img01.txt").read_text() == "a blue square\n"
    assert (ds / "img02.txt").read_text() == "fixed\n"
    assert {i["image"]: i["caption"] for i in _preview(client, ds)["items"]}["img01.png"] == "a blue square"
    assert not [p for p in ds.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize(
    ("edits", "said"),
    [
        ({"../../etc/passwd": "x"}, "../../etc/passwd: not an image of"),
        ({"img00.txt": "x"}, "img00.txt: not an image of"),
        ({"/abs/img00.png": "x"}, "not an image of"),
        ({"img01.png": "a\x1b[31mred"}, "img01.png: the caption contains control characters"),
        ({"img01.png": "  \n "}, "img01.png: the caption is empty"),
        ({"img01.png": "x" * 4001}, "img01.png: the caption has 4001 characters (at most 4000)"),
    ],
)
def test_a_save_naming_anything_else_is_refused_whole(
    client: Client, ui_data: Path, edits: dict[str, str], said: str, request: pytest.FixtureRequest
) -> None:
    ds = _dataset(ui_data / f"prev-hostile-{request.node.callspec.id}")
    before = _files(ds)
    r = _save(client, ds, {"img02.png": "would be fine", **edits})
    assert not r["ok"] and r["written"] == [] and said in r["errors"][0]["message"], r
    assert r["errors"][0]["field"] == "captions"
    assert _files(ds) == before  # nothing written, not even the good one


def test_folders_and_files_outside_are_refused(
    client: Client, ui_data: Path, ui_runs: Path, tmp_path: Path
) -> None:
    outside = _dataset(tmp_path / "outside")
    before = _files(outside)
    for folder in (str(outside), str(ui_runs), "demo", ""):
        r = client.predict(folder, ".txt", 0, api_name="/caption_preview")
        assert not r["ok"] and r["errors"][0]["field"] == "dataset.path", (folder, r)
        r = client.predict(folder, ".txt", {"img00.png": "x"}, api_name="/caption_save")
        assert not r["ok"] and r["errors"][0]["field"] == "dataset.path", (folder, r)
    assert _files(outside) == before
    ds = _dataset(ui_data / "prev-links")
    r = _preview(client, ds, ext="txt/../x")
    assert not r["ok"] and r["errors"][0]["field"] == "dataset.caption_extension", r
    # A caption file that is a symbolic link to a file outside: listed as a problem, never written.
    (ds / "img01.txt").symlink_to(outside / "img00.txt")
    r = _preview(client, ds)
    assert [i["image"] for i in r["items"]] == ["img00.png", "img02.png"], r
    assert any("img01.txt" in p and "symbolic link" in p for p in r["problems"]), r
    r = _save(client, ds, {"img01.png": "overwritten?"})
    assert not r["ok"] and "img01.png: not an image of" in r["errors"][0]["message"], r
    assert _files(outside) == before
    bad = client.predict(str(ds), ".txt", ["img00.png"], api_name="/caption_save")
    assert not bad["ok"] and "edits" in str(bad), bad
