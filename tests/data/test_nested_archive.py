"""An archive inside an archive is refused by name (issue 18, point 2): nothing unpacks it, so a dataset
ZIP holding one is never "No problems found", and never lands anywhere (a run's folder included)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from flux2_lora.data.archive import extract_zip, prepare_dataset_source
from flux2_lora.data.scan import DatasetError
from tests.helpers import cli


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _inner() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", "x")
    return buf.getvalue()


@pytest.mark.parametrize("name", ["inner.zip", "deep/inner.ZIP", "x.tar.gz", "y.7z", "z.tgz"])
def test_a_zip_holding_an_archive_is_refused(tmp_path: Path, name: str) -> None:
    z = _zip(tmp_path / "outer.zip", {"a.txt": b"caption", name: _inner()})
    run = tmp_path / "run"
    with pytest.raises(DatasetError, match=f"{name}: an archive inside an archive is not unpacked"):
        prepare_dataset_source(z, run / ".work" / "dataset.path")
    with pytest.raises(DatasetError, match="archive inside an archive"):
        extract_zip(z, tmp_path / "out")
    assert not run.exists() and not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["outer.zip"]  # no partial folder left


def test_dataset_check_names_the_inner_archive(tmp_path: Path) -> None:
    z = _zip(tmp_path / "only.zip", {"inner.zip": _inner()})
    proc = cli("dataset", "check", str(z), timeout=120)
    assert proc.returncode != 0 and "No problems found" not in proc.stdout, proc.stdout
    assert "inner.zip: an archive inside an archive is not unpacked" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_folder_named_like_an_archive_is_fine(tmp_path: Path) -> None:
    z = _zip(tmp_path / "ok.zip", {"photos.zip/a.txt": b"x", "notes.txt": b"y"})
    assert (prepare_dataset_source(z, tmp_path / "w") / "photos.zip" / "a.txt").is_file()
