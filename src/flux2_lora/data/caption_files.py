"""Which caption file each image of a dataset folder has, and writing one (pure Python: no torch).

Captioning (:mod:`flux2_lora.captioning`) plans with it which images to caption, and the web UI's caption
previews which files the user may edit: the same pairing as training's (same stem, the caption extension
in any case), the same refusals (a caption that is a symbolic link, or not a regular file, is never
replaced), and one atomic write.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from flux2_lora.display import escape

Mode = Literal["keep", "overwrite", "prefix"]
MODES: tuple[Mode, ...] = ("keep", "overwrite", "prefix")
# Passed to the scanner as its caption extension so that it reads no caption file at all: a caption
# that cannot be read must not hide its image here (overwrite mode replaces it). No file name holds NUL.
_NO_CAPTION_FILES = ".\x00"


@dataclass
class Plan:
    root: Path
    todo: list[tuple[Path, Path]] = field(default_factory=list)  # (image, caption file to write)
    kept: list[str] = field(default_factory=list)  # images that have a caption (keep/prefix modes)
    problems: list[str] = field(default_factory=list)  # "file: message", one line each
    num_images_found: int = 0


def rel_name(root: Path, path: Path) -> str:
    return escape(path.relative_to(root).as_posix())


def _existing_caption(image: Path, caption_extension: str, listing: dict[Path, list[str]]) -> Path | None:
    """The caption file beside ``image`` as training pairs it (same stem, extension in any case)."""
    names = listing.get(image.parent)
    if names is None:
        try:
            names = listing[image.parent] = os.listdir(image.parent)
        except OSError:
            names = listing[image.parent] = []
    stem, ext = image.stem, caption_extension.lower()
    for name in names:
        base, suffix = os.path.splitext(name)
        if base == stem and suffix.lower() == ext:
            return image.parent / name
    return None


def plan_captions(root: str | Path, *, caption_extension: str = ".txt", mode: Mode = "keep") -> Plan:
    """What captioning ``root`` will do; raises :class:`flux2_lora.data.scan.DatasetError` for a folder
    that cannot be used at all. Images are found (and refused) by the dataset scanner training uses."""
    from flux2_lora.data.scan import scan_dataset

    root = Path(root).expanduser()
    report = scan_dataset(root, caption_extension=_NO_CAPTION_FILES)
    plan = Plan(root=root, num_images_found=report.num_images_found)
    plan.problems += [f"{p.file}: {p.message}" for p in report.errors]  # unreadable images, escapes
    real_root = Path(os.path.realpath(root))
    listing: dict[Path, list[str]] = {}
    claimed: dict[Path, Path] = {}  # caption file → the image that will have it
    for item in report.items:
        image, rel = item.path, rel_name(root, item.path)
        existing = _existing_caption(image, caption_extension, listing)
        target = existing or image.with_suffix(caption_extension)
        real_parent = Path(os.path.realpath(target.parent))
        if real_parent != real_root and real_root not in real_parent.parents:
            plan.problems.append(f"{rel}: its folder leads outside the dataset folder; not captioned")
            continue
        if target in claimed:
            other = rel_name(root, claimed[target])
            plan.problems.append(
                f"{rel}: shares the caption file {rel_name(root, target)} with {other}; not captioned (rename one)"
            )
            continue
        claimed[target] = image
        if existing is not None:
            mode_bits = os.lstat(existing).st_mode
            if stat.S_ISLNK(mode_bits):
                plan.problems.append(
                    f"{rel_name(root, existing)}: caption file is a symbolic link; not replaced"
                )
                continue
            if not stat.S_ISREG(mode_bits):
                plan.problems.append(
                    f"{rel_name(root, existing)}: caption path is not a regular file; not replaced"
                )
                continue
            if mode != "overwrite":
                plan.kept.append(rel)
                continue
        plan.todo.append((image, target))
    return plan


def write_caption(path: Path, text: str, *, replace: bool) -> None:
    """Write ``text`` to ``path`` atomically (a hidden temporary file beside it, then a rename): an
    interrupted run leaves either no caption or a whole one, so keep mode can resume. Without
    ``replace``, a file that appeared at ``path`` meanwhile is kept (FileExistsError)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); a caption gets what any new file gets, or the mode of
        # the file it replaces.
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode) if replace else None
        except OSError:
            mode = None
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)  # atomic and exclusive: fails if the name exists
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise FileExistsError(errno.EEXIST, "a caption file appeared meanwhile; kept") from None
            # A file system without hard links (exFAT, some network shares): check, then rename.
            if os.path.lexists(path):
                raise FileExistsError(errno.EEXIST, "a caption file appeared meanwhile; kept") from None
            os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
