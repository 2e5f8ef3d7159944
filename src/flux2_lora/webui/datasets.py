"""Dataset uploads and the dataset check (no Gradio, no torch).

An uploaded ZIP is unpacked into a fresh folder of its own under the uploads folder (never over an
existing one). A ZIP typed as dataset.path is unpacked once per content into a folder named after its
fingerprint, so checking it again costs nothing and never replaces anything but that same extraction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tempfile
from pathlib import Path
from typing import Any

from flux2_lora.config import DatasetSection
from flux2_lora.config.warnings import upscaled_from_report
from flux2_lora.units import GIB
from flux2_lora.webui.paths import AppPaths, PathRefused, is_builtin_dataset, unpacked_paths


def upload_dataset(paths: AppPaths, file: str | None) -> dict[str, Any]:
    """Unpack an uploaded ZIP into ``<uploads>/<name>-<random>/``: {ok, dataset_dir | message}."""
    from flux2_lora.data.archive import extract_zip
    from flux2_lora.data.scan import DatasetError

    if not file:
        return {"ok": False, "message": "no file was uploaded"}
    src = Path(file)
    try:
        size = src.stat().st_size
    except OSError:
        return {"ok": False, "message": "the uploaded file is gone; upload it again"}
    if size > paths.max_upload_bytes:
        return {
            "ok": False,
            "message": f"the upload is {size / GIB:.2f} GiB, over the limit of "
            f"{paths.max_upload_bytes / GIB:.2f} GiB (start the UI with --max-upload-size to change it)",
        }
    if src.suffix.lower() != ".zip":
        return {"ok": False, "message": "upload a .zip of images and captions"}
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", src.stem)[:60].strip("._") or "dataset"
    folder = Path(tempfile.mkdtemp(prefix=f"{stem}-", dir=paths.uploads))
    try:
        root = extract_zip(src, folder / "dataset")
    except DatasetError as e:
        _remove_empty(folder)
        return {"ok": False, "message": str(e).replace(f"dataset.path: {src}: ", "the ZIP ")}
    return {"ok": True, "dataset_dir": str(root)}


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # only ever our own, still empty, folder
    except OSError:
        pass


def _zip_folder(paths: AppPaths, zip_path: Path) -> Path:
    """Where a typed ZIP is unpacked for checking: one folder per (file, size, modification time)."""
    st = zip_path.stat()
    key = hashlib.sha256(f"{zip_path}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:20]
    return paths.uploads / f".zip-{key}"


def dataset_source(paths: AppPaths, path: str) -> tuple[str, Path]:
    """dataset.path as this UI may open it ('demo', an allowed folder, or an allowed ZIP) and the folder a
    ZIP unpacks into; raises PathRefused or DatasetError with a message naming the field."""
    from flux2_lora.data.scan import DatasetError

    if not path.strip():
        raise DatasetError("dataset.path: is empty")
    if is_builtin_dataset(path):
        return path, paths.uploads
    real = paths.readable("dataset.path", path)
    if not real.exists():
        raise DatasetError(f"dataset.path: {path} does not exist")
    # A folder is used where it is; a ZIP gets a folder of its own per (file, size, modification time).
    return str(real), _zip_folder(paths, real) if real.is_file() else paths.uploads


def dataset_root(paths: AppPaths, path: str) -> Path:
    """The folder to read for dataset.path (a ZIP unpacked); raises PathRefused or DatasetError."""
    from flux2_lora.data.archive import prepare_dataset_source
    from flux2_lora.data.demo import ensure_demo_dataset
    from flux2_lora.data.demo_edit import ensure_demo_edit_dataset, is_demo_edit
    from flux2_lora.variants import is_demo

    source, work = dataset_source(paths, path)
    if is_demo(source):
        return ensure_demo_dataset()
    if is_demo_edit(source):
        return ensure_demo_edit_dataset()
    return prepare_dataset_source(Path(source), work)


def unpacked_data(paths: AppPaths, field: str, value: Any) -> Any:
    """A checked data path (dataset.path, validation.eval_folder) as the trainer gets it from the UI: a
    folder as is, a ZIP unpacked into its own folder of the uploads folder, so a trainer started here never
    unpacks anything into its run folder. A list item by item; an entry (dataset.extra[0]) its dataset
    path, not its mask folder; image files (validation.references) never. DatasetError naming ``field``."""
    if isinstance(value, list):
        return [unpacked_data(paths, f"{field}[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = dict(value)
        for item, path in unpacked_paths(field, value):
            out[item.rsplit(".", 1)[1]] = _unpacked(paths, item, path)
        return out
    if not unpacked_paths(field, value):
        return value  # not a dataset path (image files)
    return _unpacked(paths, field, value)


def _unpacked(paths: AppPaths, field: str, value: str) -> str:
    from flux2_lora.data.archive import prepare_dataset_source
    from flux2_lora.data.scan import DatasetError

    p = Path(value)
    if is_builtin_dataset(value) or not value.strip() or not p.is_file():
        return value
    try:
        return str(prepare_dataset_source(p, _zip_folder(paths, p)))
    except DatasetError as e:
        text = str(e)
        raise DatasetError(
            field + text[len("dataset.path") :] if text.startswith("dataset.path") else text
        ) from None


def check_dataset(paths: AppPaths, config: dict[str, Any]) -> dict[str, Any]:
    """Scan the form's dataset: counts, problems, trigger findings, bucket table (when bucketing), and
    what the common-mistake warnings need (num_images, upscaled)."""
    from flux2_lora.data import DatasetError, open_dataset
    from flux2_lora.data.buckets import bucket_table, format_table
    from flux2_lora.data.captions import trigger_findings
    from flux2_lora.webui.edit_view import dataset_pairs

    section = (config or {}).get("dataset") if isinstance(config, dict) else None
    if section is not None and not isinstance(section, dict):
        return {"ok": False, "field": "dataset", "message": "must be a mapping of dataset fields"}
    ds = {**DatasetSection().model_dump(exclude={"path"}), **(section or {})}
    path = str(ds.get("path") or "")
    try:
        source, work = dataset_source(paths, path)
        resolution = int(ds["resolution"])
        # An absolute reference folder is confined like the dataset; a relative one the scan keeps inside.
        reference_path = paths.checked_value("dataset.reference_path", str(ds.get("reference_path") or ""))
        root, report = open_dataset(
            source,
            work,
            caption_extension=str(ds["caption_extension"]),
            default_caption=str(ds["default_caption"]),
            resolution=resolution,
            reference_path=reference_path,
            reference_max_pixels=int(ds.get("reference_max_pixels") or 0),
        )
    except PathRefused as e:
        return {"ok": False, "field": e.field, "message": e.message}
    except (DatasetError, ValueError, TypeError, OSError) as e:
        return {"ok": False, "field": "dataset.path", "message": str(e).removeprefix("dataset.path: ")}
    out: dict[str, Any] = {
        "ok": bool(report.items),
        "root": str(root),
        "report": report.to_dict(),
        "text": report.format(),
        "num_images": len(report.items),
        "upscaled": [list(u) for u in upscaled_from_report(report, resolution)],
    }
    refs = report.references
    if refs is not None:  # an edit dataset: what the estimate's reference rules need, and the pairs shown
        out["max_references"] = max(refs.counts, default=0)
        out["reference_error"] = report.reference_folder_error()
        out["pairs"] = dataset_pairs(paths, root, report.items)
    pairs = [(str(i.path.relative_to(root)), i.caption) for i in report.items]
    out["trigger"] = [
        {"file": f, "severity": s, "message": m}
        for f, s, m in trigger_findings(pairs, str(ds["trigger_word"]))
    ]
    if ds.get("bucketing"):
        table = bucket_table([(i.width, i.height) for i in report.items], resolution, int(ds["bucket_step"]))
        out["buckets"] = [{"width": w, "height": h, "images": n} for (w, h), n in sorted(table.items())]
        out["bucket_text"] = format_table(table)
    out["entries"] = _entries(paths, section or {}, ds.get("extra"))
    # "ok" is dataset.path's (the head line); each entry carries its own counts or error.
    out["entries_ok"] = all("error" not in e and e.get("num_images") for e in out["entries"])
    return out


def _entries(paths: AppPaths, section: dict[str, Any], extra: Any) -> list[dict[str, Any]]:
    """Each dataset.extra entry checked like dataset.path, with its own settings: images, captions
    missing, mask coverage, role (data/check.py); an entry that cannot be read says why, by its field."""
    from pydantic import ValidationError

    from flux2_lora.config.io import validate_section
    from flux2_lora.data import DatasetError, open_dataset
    from flux2_lora.data.check import entry_summary
    from flux2_lora.data.entries import dataset_parts

    if not extra:
        return []
    parsed, issues = validate_section(
        DatasetSection, {**section, "path": section.get("path") or "demo"}, "dataset"
    )
    if parsed is None:
        named = [i for i in issues if i.path.startswith("dataset.extra")]
        return [{"entry": "dataset.extra", "error": str(named[0] if named else issues[0])}]
    out: list[dict[str, Any]] = []
    for part in dataset_parts(parsed)[1:]:
        s = part.settings
        try:
            checked = paths.checked_value(part.label, s.model_dump(include={"path", "mask_path"}))
            source, work = dataset_source(paths, checked["path"])
            root, report = open_dataset(
                source,
                work,
                caption_extension=s.caption_extension,
                default_caption=s.default_caption,
                resolution=s.resolution,
                field=part.field,
                # An absolute reference folder is confined for dataset.path only; entries pair relatively.
                reference_path=s.reference_path if not Path(s.reference_path).is_absolute() else "",
                reference_max_pixels=s.reference_max_pixels,
            )
            own = part.settings.model_copy(update={"mask_path": checked["mask_path"]})
            out.append(entry_summary(dataclasses.replace(part, settings=own), report, root))
        except PathRefused as e:
            out.append(
                {"entry": part.label, "path": s.path, "role": part.role, "error": f"{e.field}: {e.message}"}
            )
        except (DatasetError, ValidationError, OSError) as e:
            out.append({"entry": part.label, "path": s.path, "role": part.role, "error": str(e)})
    return out
