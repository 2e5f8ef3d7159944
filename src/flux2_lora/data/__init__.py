"""The dataset: scanning a folder (:mod:`.scan`), unpacking a .zip (:mod:`.archive`), both behind
:func:`open_dataset` (:mod:`.source`); loading images is the trainer's (torch), in
:mod:`flux2_lora.training.images`.
"""

from __future__ import annotations

from flux2_lora.data.archive import extract_zip, prepare_dataset_source
from flux2_lora.data.scan import (
    IMAGE_EXTENSIONS,
    DatasetError,
    DatasetReport,
    ImageItem,
    Problem,
    require_usable,
    scan_dataset,
)
from flux2_lora.data.source import open_dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "DatasetReport",
    "ImageItem",
    "Problem",
    "extract_zip",
    "open_dataset",
    "prepare_dataset_source",
    "require_usable",
    "scan_dataset",
]
