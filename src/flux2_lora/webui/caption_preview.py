"""Caption previews of the dataset section: each image of a dataset folder as a thumbnail with its caption,
a page at a time, and Save for the captions the user edited (no Gradio, no torch).

Every request is treated as hostile. The folder is the one captioning may write in (ops._caption_dataset:
inside the allowed data folders, never the runs folder or the demo). The images and their caption files
are the ones captioning would write (data/caption_files.plan_captions, the pairing training reads): a
save names images by their path inside the folder, and one that is not an image listed there is refused,
so nothing is ever written anywhere else. A caption is bounded in length, written atomically, and only
where it changed; a caption file that is a symbolic link or not a regular file is never replaced. Save
overwrites the caption files of the listed images (no backup is kept: the edit is the user's own) and
never deletes anything. Thumbnails are made once into the UI's generated folder, never the dataset.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from flux2_lora.config import DatasetSection
from flux2_lora.config.generation import text_problem
from flux2_lora.config.io import validate_section
from flux2_lora.data.caption_files import plan_captions, write_caption
from flux2_lora.data.scan import DatasetError, read_caption
from flux2_lora.webui import monitor
from flux2_lora.webui.ops import _caption_dataset, _caption_slot
from flux2_lora.webui.paths import AppPaths, PathRefused

PAGE_SIZE = 12
MAX_CAPTION_CHARS = 4000  # a prompt's limit (config.generation); beyond it, a wrong paste
MAX_EDITS = 10_000  # a save request larger than any dataset a page-by-page editor produces
THUMB_PX = 256


class _Refused(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def _refused(field: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "errors": [{"field": field, "message": message}], **extra}


Listing = tuple[Path, list[tuple[str, Path, Path]], list[str]]


def _listing(paths: AppPaths, dataset: str, caption_extension: str) -> Listing:
    """The folder, its images as (path inside the folder, image, caption file) in scan order, and the
    images left out, each with the reason (an unreadable image, a caption file that is a link)."""
    section, issues = validate_section(DatasetSection, {"caption_extension": caption_extension}, "dataset")
    if section is None:
        raise _Refused(issues[0].path, issues[0].message)
    try:
        folder = _caption_dataset(paths, dataset)
    except PathRefused as e:
        raise _Refused(e.field, e.message) from None
    try:
        plan = plan_captions(folder, caption_extension=section.caption_extension, mode="overwrite")
    except DatasetError as e:
        raise _Refused("dataset.path", str(e)) from None
    # overwrite mode: every image whose caption file may be written (refused ones are in plan.problems)
    items = [(image.relative_to(folder).as_posix(), image, target) for image, target in plan.todo]
    return folder, items, plan.problems


def _thumbnail(paths: AppPaths, folder: Path, image: Path) -> str:
    """A small PNG of the image in the UI's generated folder (made once per image version)."""
    st = image.stat()
    key = hashlib.sha1(f"{image}\0{st.st_size}\0{st.st_mtime_ns}".encode("utf-8", "surrogateescape"))
    thumbs = _caption_slot(paths, folder) / "thumbs"
    thumbs.mkdir(exist_ok=True)
    out = thumbs / f"{key.hexdigest()[:20]}.png"
    if not out.is_file():
        # The scanner behind the listing has refused images over its pixel limit (decompression bombs).
        with Image.open(image) as im:
            im.draft("RGB", (THUMB_PX, THUMB_PX))  # JPEGs decode at a fraction of their size
            small = ImageOps.exif_transpose(im).convert("RGB")
            small.thumbnail((THUMB_PX, THUMB_PX))
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        small.save(tmp, format="PNG")
        os.replace(tmp, out)
    return str(out)


def caption_preview(
    paths: AppPaths, dataset: str, caption_extension: str = ".txt", page: int = 0
) -> dict[str, Any]:
    """One page of the dataset's images: {ok, dataset, page, pages, total, items: [{image, caption_file,
    caption, thumb, error}], problems}. An image whose caption cannot be read or whose thumbnail cannot
    be made is listed with the error, naming its file (its caption is then not editable)."""
    try:
        folder, items, problems = _listing(paths, dataset, caption_extension)
    except _Refused as e:
        return _refused(e.field, e.message, items=[], page=0, pages=0, total=0)
    pages = max(1, math.ceil(len(items) / PAGE_SIZE))
    page = min(max(int(page) if isinstance(page, (int, float)) else 0, 0), pages - 1)
    shown = []
    for rel, image, target in items[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]:
        row: dict[str, Any] = {
            "image": rel,
            "caption_file": target.relative_to(folder).as_posix(),
            "caption": "",
            "thumb": None,
            "error": "",
        }
        try:
            row["caption"] = read_caption(target) if target.exists() else ""
        except (OSError, ValueError) as e:
            row["error"] = f"{row['caption_file']}: {e}"
        try:
            row["thumb"] = _thumbnail(paths, folder, image)
        except Exception as e:  # PIL raises almost anything on a damaged file; the listing goes on
            row["error"] = row["error"] or f"{rel}: no thumbnail ({e})"
        shown.append(row)
    return {
        "ok": True,
        "dataset": str(folder),
        "page": page,
        "pages": pages,
        "total": len(items),
        "items": shown,
        "problems": problems,
        "errors": [],
    }


def clean_caption(text: str) -> tuple[str, str | None]:
    """A caption as the user typed it, as training reads it back (data.scan.read_caption: line ends made
    LF, trailing spaces dropped), and why it is refused: a control character other than a line break
    or a tab (the prompts' rule, config.generation.text_problem)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    caption = "\n".join(line.rstrip() for line in text.split("\n")).strip()
    return caption, text_problem(caption.replace("\n", " ").replace("\t", " "), prompt=True)


def _readable(path: Path) -> str | None:
    """The caption on disk; None where it cannot be read (the edit then replaces the broken file)."""
    try:
        return read_caption(path)
    except (OSError, ValueError):
        return None


def caption_save(
    paths: AppPaths, dataset: str, caption_extension: str, edits: dict[str, str]
) -> dict[str, Any]:
    """Write the edited captions ({image path inside the folder: caption}) beside their images: {ok,
    written, unchanged, errors}. The whole request is refused, nothing written, when one entry names no
    listed image, is not text, is empty or too long; a file that cannot be written is named and the
    others are still written."""
    if not isinstance(edits, dict) or len(edits) > MAX_EDITS:
        return _refused("captions", f"give at most {MAX_EDITS} edited captions as {{image: caption}}")
    try:
        folder, items, _problems = _listing(paths, dataset, caption_extension)
    except _Refused as e:
        return _refused(e.field, e.message)
    if monitor.is_running(_caption_slot(paths, folder), "caption"):
        return _refused("dataset.path", f"{folder} is being captioned: save when it has ended")
    listed = {rel: target for rel, _image, target in items}
    errors: list[dict[str, str]] = []
    todo: list[tuple[Path, str]] = []
    for rel, text in edits.items():
        name = repr(rel)[:200] if not isinstance(rel, str) else rel[:200]
        if not isinstance(rel, str) or rel not in listed:
            errors.append({"field": "captions", "file": name, "message": f"{name}: not an image of {folder}"})
            continue
        if not isinstance(text, str):
            errors.append({"field": "captions", "file": rel, "message": f"{rel}: the caption must be text"})
            continue
        caption, problem = clean_caption(text)
        if problem:
            errors.append({"field": "captions", "file": rel, "message": f"{rel}: the caption {problem}"})
        elif not caption:
            errors.append({"field": "captions", "file": rel, "message": f"{rel}: the caption is empty"})
        elif len(caption) > MAX_CAPTION_CHARS:
            errors.append(
                {
                    "field": "captions",
                    "file": rel,
                    "message": f"{rel}: the caption has {len(caption)} characters (at most {MAX_CAPTION_CHARS})",
                }
            )
        else:
            todo.append((listed[rel], caption))
    if errors:
        return {"ok": False, "written": [], "unchanged": 0, "errors": errors}
    written, unchanged = [], 0
    for target, caption in todo:
        where = target.relative_to(folder).as_posix()
        try:
            exists = target.exists()
            if exists and _readable(target) == caption:
                unchanged += 1
                continue
            write_caption(target, caption, replace=exists)
            written.append(where)
        except (OSError, ValueError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            errors.append({"field": "captions", "file": where, "message": f"{where}: not written ({why})"})
    return {"ok": not errors, "written": written, "unchanged": unchanged, "errors": errors}
