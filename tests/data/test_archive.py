"""ZIP datasets: unsafe archives are refused before anything is written, extraction is atomic and cached."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from flux2_lora.data import archive
from flux2_lora.data.archive import MARKER, extract_zip, prepare_dataset_source, validate_zip
from flux2_lora.data.scan import DatasetError, scan_dataset
from flux2_lora.units import GIB


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def make_zip(
    path: Path, entries: Sequence[tuple[str | zipfile.ZipInfo, bytes]], *, deflate: bool = True
) -> Path:
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def good_entries() -> list[tuple[str | zipfile.ZipInfo, bytes]]:
    return [("set/", b""), ("set/a.png", png_bytes()), ("set/a.txt", b"a photo of sks")]


def leftovers(work: Path) -> list[str]:
    return sorted(p.name for p in work.iterdir()) if work.exists() else []


def refused(
    tmp_path: Path, entries: Sequence[tuple[str | zipfile.ZipInfo, bytes]], match: str, **kw: bool
) -> str:
    """Assert the zip is refused with a message naming it, and that nothing was extracted anywhere."""
    zp = make_zip(tmp_path / "data.zip", entries, **kw)
    work = tmp_path / "work"
    with pytest.raises(DatasetError, match=match) as e:
        prepare_dataset_source(zp, work)
    assert str(zp) in str(e.value)
    assert leftovers(work) == []  # no "dataset", no half-written temporary folder
    return str(e.value)


# ----------------------------------------------------------------------------- sources


def test_folder_is_returned_as_is(tmp_path: Path) -> None:
    assert prepare_dataset_source(tmp_path, tmp_path / "work") == tmp_path
    assert not (tmp_path / "work").exists()


def test_missing_path_and_wrong_kind_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=f"dataset.path: {tmp_path / 'nope'} does not exist"):
        prepare_dataset_source(tmp_path / "nope", tmp_path / "work")
    (tmp_path / "photo.png").write_bytes(png_bytes())
    with pytest.raises(DatasetError, match="photo.png is neither a folder nor a .zip archive"):
        prepare_dataset_source(tmp_path / "photo.png", tmp_path / "work")


def test_zip_is_extracted_and_scannable(tmp_path: Path) -> None:
    zp = make_zip(tmp_path / "Data.ZIP", [*good_entries(), ("__MACOSX/set/._a.png", b"junk")])
    root = prepare_dataset_source(zp, tmp_path / "work")
    assert root == tmp_path / "work" / "dataset"
    assert (root / "set" / "a.png").read_bytes() == png_bytes()
    assert not (root / "__MACOSX").exists()
    assert leftovers(tmp_path / "work") == ["dataset"]
    report = scan_dataset(root)
    assert [(i.path.name, i.caption) for i in report.items] == [("a.png", "a photo of sks")]
    assert report.problems == []  # the marker file is hidden from the scan


def test_extraction_is_reused_until_the_zip_changes(tmp_path: Path) -> None:
    zp = make_zip(tmp_path / "data.zip", [("a.txt", b"aaaa")], deflate=False)
    work = tmp_path / "work"
    root = prepare_dataset_source(zp, work)
    sentinel = root / "sentinel"
    sentinel.write_text("still here")
    assert prepare_dataset_source(zp, work) == root and sentinel.exists()  # same size + mtime
    st = zp.stat()
    os.utime(zp, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert prepare_dataset_source(zp, work) == root and sentinel.exists()  # touched: same hash
    make_zip(zp, [("a.txt", b"bbbb")], deflate=False)  # same size, new content
    assert zp.stat().st_size == st.st_size
    os.utime(zp, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    prepare_dataset_source(zp, work)
    assert not sentinel.exists() and (root / "a.txt").read_bytes() == b"bbbb"
    make_zip(zp, [("b.txt", b"a new file")])
    prepare_dataset_source(zp, work)
    assert sorted(p.name for p in root.iterdir()) == [MARKER, "b.txt"]
    assert leftovers(work) == ["dataset"]  # the old extraction was cleaned away


# ----------------------------------------------------------------------------- unsafe entries


@pytest.mark.parametrize(
    "name", ["../evil.txt", "set/../../evil.txt", "..\\evil.txt", "set\\..\\..\\evil.txt"]
)
def test_parent_traversal_is_refused_before_anything_is_written(tmp_path: Path, name: str) -> None:
    msg = refused(tmp_path, [*good_entries(), (zipfile.ZipInfo(name), b"pwned")], "outside the archive")
    assert repr(name) in msg
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("name", ["/etc/evil", "C:\\evil.txt", "c:/evil.txt", "\\\\server\\share\\x"])
def test_absolute_paths_are_refused(tmp_path: Path, name: str) -> None:
    msg = refused(tmp_path, [*good_entries(), (zipfile.ZipInfo(name), b"pwned")], "absolute path")
    assert repr(name) in msg


def test_symlink_entries_are_refused(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("set/b.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    msg = refused(tmp_path, [*good_entries(), (link, b"/etc/passwd")], "symbolic link")
    assert "'set/b.png'" in msg


def test_special_files_and_duplicates_are_refused(tmp_path: Path) -> None:
    fifo = zipfile.ZipInfo("set/pipe")
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    refused(tmp_path, [*good_entries(), (fifo, b"")], "not a regular file or folder")
    refused(
        tmp_path, [*good_entries(), ("set/a.txt", b"a second caption")], "'set/a.txt' appears more than once"
    )


def test_encrypted_entries_are_refused(tmp_path: Path) -> None:
    zp = make_zip(tmp_path / "data.zip", good_entries())
    with zipfile.ZipFile(zp) as zf:
        zf.infolist()[1].flag_bits |= 0x1  # zipfile cannot write encrypted entries; mark one as such
        with pytest.raises(DatasetError, match="'set/a.png' is encrypted"):
            validate_zip(zp, zf)


# ----------------------------------------------------------------------------- sizes and bombs


def test_default_limits() -> None:
    assert archive.MAX_TOTAL_BYTES == 4 * GIB
    assert archive.MAX_ENTRIES == 20_000
    assert archive.MAX_RATIO == 200


def test_total_size_and_entry_count_limits(tmp_path: Path) -> None:
    zp = make_zip(tmp_path / "data.zip", [(f"f{i}.txt", b"x" * 100) for i in range(4)])
    dest = tmp_path / "out"
    with pytest.raises(DatasetError, match=r"data.zip: unpacks to .* more than the limit"):
        extract_zip(zp, dest, max_total_bytes=399)
    with pytest.raises(DatasetError, match="data.zip: has 4 entries, more than the limit of 3"):
        extract_zip(zp, dest, max_entries=3)
    assert leftovers(tmp_path) == ["data.zip"]
    extract_zip(zp, dest, max_total_bytes=400, max_entries=4)  # exactly at the limits is fine
    assert len(list(dest.glob("f*.txt"))) == 4


def test_zip_bomb_entry_ratio_is_refused(tmp_path: Path) -> None:
    msg = refused(tmp_path, [*good_entries(), ("set/zeros.bmp", bytes(4 << 20))], "compression ratio of")
    assert "'set/zeros.bmp'" in msg and "zip bomb" in msg


def test_zip_bomb_total_ratio_is_refused(tmp_path: Path) -> None:
    # Each entry is under the per-entry threshold, but together they are a bomb.
    entries = [(f"z{i}.txt", bytes(900_000)) for i in range(3)]
    refused(tmp_path, entries, "total compression ratio")


def test_lying_size_header_is_caught_while_extracting(tmp_path: Path) -> None:
    payload = b"0123456789abcdef" * 4096  # 64 KiB, compresses well below the ratio limit
    zp = make_zip(tmp_path / "data.zip", [("a.txt", b"first"), ("b.txt", payload)])
    raw = bytearray(zp.read_bytes())
    cd = raw.index(b"PK\x01\x02", raw.index(b"PK\x01\x02") + 4)  # central directory entry of b.txt
    raw[cd + 24 : cd + 28] = (100).to_bytes(4, "little")  # claim 100 bytes uncompressed
    zp.write_bytes(bytes(raw))
    work = tmp_path / "work"
    with pytest.raises(DatasetError, match="entry 'b.txt' is corrupt"):
        prepare_dataset_source(zp, work)
    assert leftovers(work) == []  # a.txt, already written, went with the temporary folder


def test_bytes_written_are_capped_even_if_the_reader_overflows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zp = make_zip(tmp_path / "data.zip", [("a.txt", b"small")])
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, info, *a, **k: io.BytesIO(b"x" * 10_000))
    with pytest.raises(DatasetError, match="entry 'a.txt' unpacks to more than its declared 5 bytes"):
        extract_zip(zp, tmp_path / "out")
    assert leftovers(tmp_path) == ["data.zip"]


# ----------------------------------------------------------------------------- broken archives, atomicity


def test_not_a_zip_and_truncated_zip(tmp_path: Path) -> None:
    zp = tmp_path / "data.zip"
    zp.write_text("I am a text file")
    with pytest.raises(DatasetError, match=f"dataset.path: {zp}: is not a valid ZIP archive"):
        prepare_dataset_source(zp, tmp_path / "work")
    make_zip(zp, good_entries())
    zp.write_bytes(zp.read_bytes()[:-30])  # cut into the central directory
    with pytest.raises(DatasetError, match="is not a valid ZIP archive"):
        prepare_dataset_source(zp, tmp_path / "work")
    assert leftovers(tmp_path / "work") == []


def test_corrupt_entry_data_names_the_entry(tmp_path: Path) -> None:
    zp = make_zip(tmp_path / "data.zip", [("a.txt", b"hello " * 1000)])
    raw = bytearray(zp.read_bytes())
    start = raw.index(b"a.txt") + len("a.txt")  # the compressed data follows the local header's name
    raw[start + 5 : start + 15] = b"\x00" * 10
    zp.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="entry 'a.txt' is corrupt"):
        prepare_dataset_source(zp, tmp_path / "work")


def test_failed_update_keeps_the_previous_extraction(tmp_path: Path) -> None:
    zp = make_zip(tmp_path / "data.zip", good_entries())
    work = tmp_path / "work"
    root = prepare_dataset_source(zp, work)
    make_zip(zp, [*good_entries(), (zipfile.ZipInfo("../evil"), b"x")])
    with pytest.raises(DatasetError):
        prepare_dataset_source(zp, work)
    assert (root / "set" / "a.txt").read_bytes() == b"a photo of sks"
    assert leftovers(work) == ["dataset"]
