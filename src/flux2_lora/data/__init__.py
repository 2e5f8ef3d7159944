"""The dataset: scanning a folder (:mod:`.scan`), unpacking a .zip (:mod:`.archive`), loading images
(:mod:`.images`, the only part that needs torch, so it is not imported here).
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

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "DatasetReport",
    "ImageItem",
    "Problem",
    "extract_zip",
    "prepare_dataset_source",
    "require_usable",
    "scan_dataset",
]
