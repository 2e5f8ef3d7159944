"""Where each image's loss mask is (dataset.mask_path, a dataset.extra entry's mask_path), without torch:
the trainer (training/masks.py) and ``dataset check`` (mask coverage) find masks the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flux2_lora.data.scan import IMAGE_EXTENSIONS, DatasetError
from flux2_lora.display import escape


def mask_root(dataset_root: Path, mask_path: str, field: str = "dataset.mask_path") -> Path | None:
    """The mask folder: a relative ``mask_path`` is inside the dataset folder (a .zip carries it)."""
    if not mask_path.strip():
        return None
    p = Path(mask_path).expanduser()
    root = p if p.is_absolute() else dataset_root / p
    if not root.is_dir():
        raise DatasetError(f"{field}: {escape(root)} is not a folder")
    return root


def find_mask(image: Path, dataset_root: Path, masks: Path) -> Path | None:
    """The mask of ``image``: same relative folder and stem under ``masks``, any image extension."""
    try:
        rel = image.relative_to(dataset_root).with_suffix("")
    except ValueError:
        rel = Path(image.stem)
    for ext in IMAGE_EXTENSIONS:
        candidate = masks / rel.parent / f"{rel.name}{ext}"
        if candidate.is_file():
            return candidate
    return None


def mask_coverage(report: Any, root: Path, mask_path: str, field: str) -> dict[str, Any] | None:
    """How many of a scan's images have a mask (the masks' own folder not counted as images); None when
    mask_path is empty. Raises DatasetError naming ``field`` when the folder is missing."""
    masks = mask_root(root, mask_path, field)
    if masks is None:
        return None
    images = [i.path for i in report.items if masks not in i.path.parents]
    # The scan counts the masks' own files as images; their missing captions are not the dataset's.
    uncaptioned = sum(1 for i in report.items if masks in i.path.parents and i.caption_source != "file")
    without = [p for p in images if find_mask(p, root, masks) is None]
    return {
        "mask_path": mask_path,
        "images": len(images),
        "with_mask": len(images) - len(without),
        "without_mask": [escape(p.relative_to(root)) for p in without[:50]],
        "mask_files_without_caption": uncaptioned,
    }
