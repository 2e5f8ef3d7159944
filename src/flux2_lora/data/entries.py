"""A run's datasets (no torch): the primary ``dataset`` section and each ``dataset.extra`` entry, resolved
to the settings it trains with (an entry's unset field is the section's), in source order.

Source 0 is ``dataset.path``; source n is ``dataset.extra[n-1]``. The loader (training/inputs.py), the
mix sampler (training/mix.py), ``dataset check`` (CLI and UI) and the estimate's resolution all read the
datasets through :func:`dataset_parts`, so an entry means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The entry fields that, when unset (None), take the primary section's value.
INHERITED = (
    "repeats",
    "resolution",
    "caption_extension",
    "default_caption",
    "trigger_word",
    "caption_dropout",
)


@dataclass(frozen=True)
class DatasetPart:
    field: str  # the config field naming it: "dataset.path" or "dataset.extra[0].path"
    work: str  # the folder under <run>/.work a .zip of it unpacks into
    settings: Any  # a DatasetSection with this dataset's own path and settings (no extra entries)
    role: str  # "train" or "regularization"
    weight: float  # sampling weight

    @property
    def label(self) -> str:
        """The section or entry its fields are in: "dataset" or "dataset.extra[0]"."""
        return self.field.removesuffix(".path")

    @property
    def regularization(self) -> bool:
        return self.role == "regularization"


def dataset_parts(ds: Any) -> list[DatasetPart]:
    """The primary dataset, then each of ``ds.extra``, with their effective settings."""
    base = ds.model_copy(update={"extra": []})
    parts = [DatasetPart("dataset.path", "dataset.path", base, "train", ds.weight)]
    for n, entry in enumerate(ds.extra):
        update: dict[str, Any] = {"path": entry.path, "mask_path": entry.mask_path, "weight": entry.weight}
        for key in INHERITED:
            value = getattr(entry, key)
            if value is not None:
                update[key] = value
            elif key == "trigger_word" and entry.role == "regularization":
                # Regularization captions describe the class without the subject: no trigger word.
                update[key] = ""
        field = f"dataset.extra[{n}].path"
        parts.append(
            DatasetPart(
                field, f"dataset.extra.{n + 1}", base.model_copy(update=update), entry.role, entry.weight
            )
        )
    return parts


def largest_resolution(config: Any) -> int:
    """The largest training resolution of a run's datasets: what sizes its activation peak."""
    return max(p.settings.resolution for p in dataset_parts(config.dataset))


def legacy_entries(dataset: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """A raw dataset mapping with extra_paths / extra_weights / regularization_path / regularization_weight
    (earlier versions) turned into ``extra`` entries; (field, message, level) for each conversion."""
    from flux2_lora.config.schema import REPLACED_DATASET_KEYS

    if not any(k in dataset for k in REPLACED_DATASET_KEYS):
        return dataset, []
    out = {k: v for k, v in dataset.items() if k not in REPLACED_DATASET_KEYS}
    issues: list[tuple[str, str, str]] = []
    paths = dataset.get("extra_paths") or []
    weights = dataset.get("extra_weights") or []
    reg = dataset.get("regularization_path") or ""
    if not isinstance(paths, list) or not isinstance(weights, list) or not isinstance(reg, str):
        issues.append(
            ("dataset.extra", "extra_paths/extra_weights must be lists and regularization_path text", "error")
        )
        return out, issues
    if weights and len(weights) != len(paths):
        issues.append(
            (
                "dataset.extra_weights",
                f"{len(weights)} weight(s) for {len(paths)} extra path(s); these fields were replaced by "
                "dataset.extra: write one entry per dataset ({path: …, weight: …})",
                "error",
            )
        )
        return out, issues
    entries: list[Any] = [{"path": p, "weight": w} for p, w in zip(paths, weights or [1.0] * len(paths))]
    if "regularization_weight" in dataset and not reg.strip():
        issues.append(
            (
                "dataset.regularization_weight",
                "only applies with a regularization dataset (now a dataset.extra entry with role: "
                "regularization)",
                "error",
            )
        )
        return out, issues
    if reg.strip():
        entries.append(
            {"path": reg, "role": "regularization", "weight": dataset.get("regularization_weight", 1.0)}
        )
    given = [k for k in REPLACED_DATASET_KEYS if k in dataset]
    issues.append(
        (
            f"dataset.{given[0]}",
            f"{', '.join('dataset.' + k for k in given)} {'is' if len(given) == 1 else 'are'} deprecated: "
            f"converted to dataset.extra ({len(entries)} entr{'y' if len(entries) == 1 else 'ies'}); write "
            "dataset.extra: [{path: …, weight: …, role: train|regularization}] instead",
            "warning",
        )
    )
    existing = out.get("extra") or []
    out["extra"] = [*existing, *entries] if isinstance(existing, list) else existing
    return out, issues
