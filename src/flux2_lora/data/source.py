"""``dataset.path`` → the folder to train from and its scan, for the CLI's check, the UI's check and the
trainer alike (no torch).

'demo' is the generated sample dataset (made on first use), a .zip is checked and unpacked once per
content under a work folder, a folder is used as it is. Which paths a caller may open at all (the UI's
allowed folders) is the caller's to decide before it calls this.
"""

from __future__ import annotations

from pathlib import Path

from flux2_lora.data.archive import prepare_dataset_source
from flux2_lora.data.demo import ensure_demo_dataset
from flux2_lora.data.scan import DatasetError, DatasetReport, scan_dataset
from flux2_lora.variants import is_demo


def open_dataset(
    path: str | Path,
    work_dir: str | Path,
    *,
    caption_extension: str = ".txt",
    default_caption: str = "",
    resolution: int | None = None,
    field: str = "dataset.path",
) -> tuple[Path, DatasetReport]:
    """(the folder holding the images, its scan report); raises DatasetError naming ``field``
    (dataset.path, or validation.eval_folder for an eval set)."""
    try:
        root = (
            ensure_demo_dataset()
            if is_demo(str(path))
            else prepare_dataset_source(Path(path).expanduser(), work_dir)
        )
    except DatasetError as e:
        text = str(e)
        if field != "dataset.path" and text.startswith("dataset.path"):
            raise DatasetError(field + text[len("dataset.path") :]) from None
        raise
    report = scan_dataset(
        root, caption_extension=caption_extension, default_caption=default_caption, resolution=resolution
    )
    return root, report
