"""``dataset check`` of a run's datasets, one summary per dataset (no torch): what the CLI prints and the
UI's dataset check shows for the primary dataset and each dataset.extra entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flux2_lora.data.entries import DatasetPart
from flux2_lora.data.masks import mask_coverage


def entry_summary(part: DatasetPart, report: Any, root: Path) -> dict[str, Any]:
    """Images, captions missing, mask coverage (where mask_path is set), role, weight and resolution of
    one dataset; DatasetError (naming the entry's mask_path) when its mask folder is missing."""
    from flux2_lora.data.captions import trigger_findings
    from flux2_lora.display import escape

    s = part.settings
    findings = trigger_findings(
        [(escape(i.path.relative_to(root)), i.caption) for i in report.items], s.trigger_word
    )
    masks = mask_coverage(report, root, s.mask_path, f"{part.label}.mask_path")
    return {
        "entry": part.label,
        "path": s.path,
        "root": str(root),
        "role": part.role,
        "weight": part.weight,
        "repeats": s.repeats,
        "resolution": s.resolution,
        "trigger_word": s.trigger_word,
        "num_images": masks["images"] if masks else len(report.items),  # the masks' folder never trains
        "num_images_found": report.num_images_found,
        "num_missing_captions": report.num_missing_captions
        - (masks["mask_files_without_caption"] if masks else 0),
        "num_errors": len(report.errors),
        "num_warnings": len(report.warnings),
        "masks": masks,
        "trigger": [{"file": f, "severity": sev, "message": m} for f, sev, m in findings],
    }


def summary_text(e: dict[str, Any]) -> str:
    """One line (two with masks) per dataset."""
    from flux2_lora.display import escape

    line = (
        f"{e['entry']} ({e['role']}, weight {e['weight']:g}, {e['resolution']} px, ×{e['repeats']}): "
        f"{e['num_images']} usable of {e['num_images_found']} images, {e['num_missing_captions']} missing "
        f"captions, {e['num_errors']} errors, {e['num_warnings']} warnings — {escape(e['path'])}"
    )
    m = e.get("masks")
    if m:
        line += f"\n  masks ({escape(m['mask_path'])}): {m['with_mask']} of {m['images']} images have one"
        if m["without_mask"]:
            line += (
                " (without: "
                + ", ".join(m["without_mask"][:5])
                + ("…" if len(m["without_mask"]) > 5 else "")
                + ")"
            )
    return line
