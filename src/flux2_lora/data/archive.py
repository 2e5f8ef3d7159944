"""Turning ``dataset.path`` into a folder: safe, atomic, idempotent ZIP extraction (no torch).

Every entry is validated before anything is written (path traversal, links, sizes, compression ratio),
bytes are counted while extracting because headers can lie, and the result appears under its final name
only once complete, so an interrupted or refused extraction leaves nothing half-written behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from flux2_lora.data.scan import DatasetError
from flux2_lora.display import escape
from flux2_lora.units import GIB

MAX_TOTAL_BYTES = 4 * GIB
MAX_ENTRIES = 20_000
MAX_RATIO = 200  # images are already compressed (ratio ~1); text and BMPs rarely exceed ~20
RATIO_MIN_BYTES = 1 << 20  # tiny files compress absurdly well and cannot hurt anyone
MARKER = ".flux2-lora-source.json"  # hidden, so the dataset scan ignores it
_CHUNK = 1 << 20
# Nothing unpacks an archive found inside one (a dataset.path naming it would unpack it where the outer
# one landed, e.g. a run's folder), so an archive holding one is refused, naming it, rather than checked
# as a dataset with no images.
NESTED_ARCHIVES = (
    ".zip",
    ".tar",
    ".tgz",
    ".gz",
    ".bz2",
    ".xz",
    ".zst",
    ".7z",
    ".rar",
    ".tbz2",
    ".txz",
    ".jar",
)
_DRIVE = re.compile(r"^[A-Za-z]:")


def _fail(zip_path: Path, message: str) -> DatasetError:
    return DatasetError(f"dataset.path: {escape(zip_path)}: {message}")


def _entry_parts(zip_path: Path, info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The entry's path components, or DatasetError if it could land outside the target folder."""
    name = info.filename
    # Windows tools write backslashes; treat them as separators so "..\\x" cannot slip through.
    norm = name.replace("\\", "/")
    if norm.startswith("/") or _DRIVE.match(norm):
        raise _fail(zip_path, f"entry {name!r} has an absolute path; refusing to extract")
    parts = tuple(p for p in PurePosixPath(norm).parts if p not in ("", "."))
    if ".." in parts:
        raise _fail(zip_path, f"entry {name!r} points outside the archive ('..'); refusing to extract")
    return parts


def validate_zip(
    zip_path: Path,
    zf: zipfile.ZipFile,
    *,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_entries: int = MAX_ENTRIES,
    max_ratio: float = MAX_RATIO,
) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """Check every entry before anything is written; return (entry, path parts) for those to extract."""
    infos = zf.infolist()
    if len(infos) > max_entries:
        raise _fail(zip_path, f"has {len(infos)} entries, more than the limit of {max_entries}")
    plan: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
    seen: set[tuple[str, ...]] = set()
    total = packed = 0
    for info in infos:
        parts = _entry_parts(zip_path, info)
        kind = stat.S_IFMT(info.external_attr >> 16)  # unix mode lives in the high 16 bits
        if kind == stat.S_IFLNK:
            raise _fail(zip_path, f"entry {info.filename!r} is a symbolic link; refusing to extract")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise _fail(zip_path, f"entry {info.filename!r} is not a regular file or folder")
        if info.flag_bits & 0x1:
            raise _fail(
                zip_path, f"entry {info.filename!r} is encrypted; unzip it yourself and use the folder"
            )
        if not parts:
            continue
        if not info.is_dir() and parts[0] != "__MACOSX" and parts[-1].lower().endswith(NESTED_ARCHIVES):
            raise _fail(
                zip_path,
                f"holds {'/'.join(parts)}: an archive inside an archive is not unpacked "
                "(unpack it and put its files in the ZIP instead)",
            )
        if parts in seen:  # a second copy would silently replace the first
            raise _fail(zip_path, f"entry {info.filename!r} appears more than once")
        seen.add(parts)
        total += info.file_size
        packed += info.compress_size
        if info.file_size > RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
            ratio = info.file_size / max(info.compress_size, 1)
            raise _fail(
                zip_path,
                f"entry {info.filename!r} has a compression ratio of {ratio:.0f}:1 (limit {max_ratio:.0f}:1); "
                "this looks like a zip bomb",
            )
        plan.append((info, parts))
    if total > max_total_bytes:
        raise _fail(
            zip_path,
            f"unpacks to {total / GIB:.2f} GiB, more than the limit of {max_total_bytes / GIB:.2f} GiB",
        )
    if total > RATIO_MIN_BYTES and total > max_ratio * max(packed, 1):
        raise _fail(
            zip_path,
            f"has a total compression ratio of {total / max(packed, 1):.0f}:1; looks like a zip bomb",
        )
    return plan


def extract_zip(
    zip_path: str | Path,
    dest: str | Path,
    *,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_entries: int = MAX_ENTRIES,
    max_ratio: float = MAX_RATIO,
) -> Path:
    """Extract ``zip_path`` into ``dest`` (replacing it) atomically; raise DatasetError if unsafe. Every
    entry is checked before any folder is made, so a refused archive leaves nothing behind."""
    zip_path, dest = Path(zip_path), Path(dest)
    tmp: Path | None = None
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                plan = validate_zip(
                    zip_path,
                    zf,
                    max_total_bytes=max_total_bytes,
                    max_entries=max_entries,
                    max_ratio=max_ratio,
                )
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-partial-", dir=dest.parent))
                _extract_all(zip_path, zf, plan, tmp, max_total_bytes)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
            raise _fail(zip_path, f"is not a valid ZIP archive ({e})") from None
        except OSError as e:
            raise _fail(zip_path, f"cannot be read or extracted ({e.strerror or e})") from None
        (tmp / MARKER).write_text(json.dumps(_fingerprint(zip_path)), encoding="utf-8")
        _swap_in(tmp, dest)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _extract_all(
    zip_path: Path,
    zf: zipfile.ZipFile,
    plan: list[tuple[zipfile.ZipInfo, tuple[str, ...]]],
    tmp: Path,
    max_total_bytes: int,
) -> None:
    root = tmp.resolve()
    written_total = 0
    for info, parts in plan:
        if parts[0] == "__MACOSX":  # Finder's resource forks: never images, the scan ignores them anyway
            continue
        target = tmp.joinpath(*parts)
        if not target.resolve().is_relative_to(root):  # belt and braces after _entry_parts
            raise _fail(zip_path, f"entry {info.filename!r} resolves outside the target folder")
        if info.is_dir() or info.filename.endswith(("/", "\\")):
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        try:
            with zf.open(info) as src, open(target, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    written += len(chunk)
                    written_total += len(chunk)
                    # Headers can lie about sizes; the bytes actually produced are what count.
                    if written > info.file_size:
                        raise _fail(
                            zip_path,
                            f"entry {info.filename!r} unpacks to more than its declared {info.file_size} bytes",
                        )
                    if written_total > max_total_bytes:
                        raise _fail(zip_path, f"unpacks to more than the limit of {max_total_bytes} bytes")
                    dst.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise _fail(zip_path, f"entry {info.filename!r} is corrupt ({e})") from None


def _swap_in(tmp: Path, dest: Path) -> None:
    """Replace ``dest`` with the finished ``tmp`` by renames only (a directory can't be os.replace'd over)."""
    old = None
    if dest.exists() or dest.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}-old-", dir=dest.parent))
        os.rename(dest, old / "x")
    os.rename(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fingerprint(zip_path: Path) -> dict[str, object]:
    st = zip_path.stat()
    return {
        "zip": str(zip_path.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": _sha256(zip_path),
    }


def _is_current(zip_path: Path, dest: Path) -> bool:
    """True if ``dest`` holds a complete extraction of this exact zip."""
    try:
        marker = json.loads((dest / MARKER).read_text(encoding="utf-8"))
        st = zip_path.stat()
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("zip") != str(zip_path.resolve()):
        return False
    if marker.get("size") == st.st_size and marker.get("mtime_ns") == st.st_mtime_ns:
        return True  # fast path: hashing gigabytes on every run start is not free
    if marker.get("size") != st.st_size:
        return False
    # Same size, new mtime (copied, touched): the hash decides, and the marker learns the new mtime.
    if marker.get("sha256") != _sha256(zip_path):
        return False
    marker["mtime_ns"] = st.st_mtime_ns
    (dest / MARKER).write_text(json.dumps(marker), encoding="utf-8")
    return True


def prepare_dataset_source(path: str | Path, work_dir: str | Path) -> Path:
    """A folder as is; a .zip extracted (once per content) into ``work_dir/dataset``; the folder to scan."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"dataset.path: {p} does not exist")
    if p.is_dir():
        return p
    if not p.is_file() or p.suffix.lower() != ".zip":
        raise DatasetError(f"dataset.path: {p} is neither a folder nor a .zip archive")
    dest = Path(work_dir) / "dataset"
    if _is_current(p, dest):
        return dest
    return extract_zip(p, dest)
