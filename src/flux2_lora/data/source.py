"""``dataset.path`` → the folder to train from and its scan, for the CLI's check, the UI's check and the
trainer alike (no torch).

'demo' is the generated sample dataset and 'demo-edit' the generated edit dataset (made on first use), a .zip is checked and unpacked once per
content under a work folder, a folder is used as it is. Which paths a caller may open at all (the UI's
allowed folders) is the caller's to decide before it calls this.
"""

from __future__ import annotations

from pathlib import Path

from flux2_lora.data.archive import prepare_dataset_source
from flux2_lora.data.demo import ensure_demo_dataset
from flux2_lora.data.demo_edit import ensure_demo_edit_dataset, is_demo_edit
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
    reference_path: str = "",
    reference_max_pixels: int = 0,
) -> tuple[Path, DatasetReport]:
    """(the folder holding the images, its scan report); raises DatasetError naming ``field``
    (dataset.path, or validation.eval_folder for an eval set). ``reference_path`` pairs the images with
    their references (see :mod:`flux2_lora.data.references`); a relative one is inside the folder."""
    try:
        if is_demo(str(path)):
            root = ensure_demo_dataset()
        elif is_demo_edit(str(path)):
            root = ensure_demo_edit_dataset()
        else:
            root = prepare_dataset_source(Path(path).expanduser(), work_dir)
    except DatasetError as e:
        text = str(e)
        if field != "dataset.path" and text.startswith("dataset.path"):
            raise DatasetError(field + text[len("dataset.path") :]) from None
        raise
    report = scan_dataset(
        root,
        caption_extension=caption_extension,
        default_caption=default_caption,
        resolution=resolution,
        reference_path=reference_path,
        reference_max_pixels=reference_max_pixels,
    )
    return root, report
