"""The folders the web UI may touch, and the one check every server-side path from a request goes through.

A request can name paths (dataset, model folder, output dir, a run, a LoRA file, a sample). Each is
resolved, symlinks followed, and accepted only inside allowed roots:

- reading data (dataset, model folder): the runs folder, the uploads folder and every ``--data-dir``
  (default: the folder the UI was started in);
- writing a run (output dir): inside the runs folder, never in its uploads, templates or generated
  folders, so nothing a client uploads can become a run a trainer resumes from;
- serving files: the runs folder only;
- resuming: only a checkpoint in a run folder's own ``checkpoints/``, where only a trainer writes.

Which config fields are paths is read from the schema (:func:`path_fields`), so a new path field is checked
without anyone listing it here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flux2_lora.data.demo_edit import is_demo_edit
from flux2_lora.units import GIB
from flux2_lora.variants import is_demo

DEFAULT_MAX_UPLOAD_BYTES = 2 * GIB
# Folders of the runs folder that are not runs: uploads (client data), saved templates, Test LoRA images.
RESERVED = ("uploads", "templates", "generated")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# A config field is a path when its name says so or when it takes a path's length (PATH_MAX).
_PATH_NAME = re.compile(r"^(path|dir|folder|file)$|_(path|dir|folder|file)$")
_LIST_PATH_NAME = re.compile(r"_(paths|dirs|folders)$")
PATH_MAX = 4096
# How a path field's value is checked; every other path field is data the trainer reads. "image": image
# files the trainer reads (never a dataset, so never unpacked as a ZIP), in a list of lists here.
PATH_ROLES = {"model.path": "model", "output.dir": "output", "validation.references": "image"}
# Data paths that, when relative, name a folder inside the dataset folder (the scan keeps them there);
# "[]" stands for any entry of a list of entries (dataset.extra).
INSIDE_DATASET = ("dataset.reference_path", "dataset.mask_path", "dataset.extra[].mask_path")
_INDEX = re.compile(r"\[\d+\]")


def is_builtin_dataset(path: str) -> bool:
    """Whether a data path names one of the generated demo datasets ('demo', 'demo-edit')."""
    return is_demo(path) or is_demo_edit(path)


class PathRefused(ValueError):
    """A path outside the allowed folders; the message names the field and the flag that allows it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def resolve_inside(path: str | Path, roots: Iterable[Path], *, base: Path | None = None) -> Path | None:
    """``path`` (relative ones against ``base``, default the working folder) with symlinks followed,
    if it is one of ``roots`` or lies below one of them; else None. Roots are resolved too."""
    text = str(path or "").strip()
    if not text or "\x00" in text:
        return None
    p = Path(text).expanduser()
    if not p.is_absolute():
        p = (base or Path.cwd()) / p
    try:
        real = p.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return None
    for root in roots:
        r = Path(root).resolve()
        if real == r or r in real.parents:
            return real
    return None


@functools.lru_cache(maxsize=1)
def path_fields() -> dict[str, str]:
    """Every path-typed field of the training config ("section.key") → its role: "model" (a hub id, demo
    or a readable folder), "output" (a run folder to write), "data" (a readable dataset folder or ZIP;
    also a list of them, or a list of entries whose own path fields are data: dataset.extra) or "image"
    (readable image files, in lists: validation.references)."""
    from flux2_lora.config import SECTIONS

    out = {}
    for section, cls in SECTIONS.items():
        for key, info in cls.model_fields.items():
            role = _field_role(f"{section}.{key}", key, info.annotation, info.metadata)
            if role:
                out[f"{section}.{key}"] = role
    return out


def _field_role(dotted: str, key: str, ann: Any, metadata: Iterable[Any] = ()) -> str | None:
    """A field's path role from its name and type (None: not a path field)."""
    if dotted in PATH_ROLES:
        return PATH_ROLES[dotted]
    if ann == list[str] and _LIST_PATH_NAME.search(key):
        return "data"  # a list of data paths
    if _entry_model(ann) is not None and _entry_fields(_entry_model(ann)):
        return "data"  # a list of entries with path fields of their own (dataset.extra)
    if ann is not str:
        return None
    longest = max((getattr(m, "max_length", 0) or 0 for m in metadata), default=0)
    return "data" if _PATH_NAME.search(key) or longest >= PATH_MAX else None


def _entry_model(ann: Any) -> Any:
    """The model of a list-of-models field (list[DatasetEntry] → DatasetEntry), else None."""
    from typing import get_args, get_origin

    if get_origin(ann) is not list:
        return None
    (item,) = get_args(ann) or (None,)
    return item if _is_model(item) else None


@functools.lru_cache(maxsize=8)
def _entry_fields(model: Any) -> dict[str, str]:
    """The path fields of an entry model (key → role), found like a section's."""
    out = {}
    for key, info in model.model_fields.items():
        ann = info.annotation
        base = str if ann == (str | None) else ann
        role = _field_role(f"entry.{key}", key, base, info.metadata)
        if role:
            out[key] = role
    return out


def _top(field: str) -> str:
    """The config field an item belongs to: "dataset.extra[0].path" → "dataset.extra"."""
    return ".".join(_INDEX.sub("", field).split(".")[:2])


def _is_model(ann: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _annotation(field: str) -> Any:
    """The type of "section.key" (list indices and entry keys followed: "dataset.extra[0].path")."""
    from typing import get_args

    from flux2_lora.config import SECTIONS

    parts = _INDEX.sub("", field).split(".")
    cls = SECTIONS.get(parts[0])
    info = cls.model_fields.get(parts[1]) if cls is not None and len(parts) > 1 else None
    ann = info.annotation if info is not None else str
    if len(parts) > 2 and _entry_model(ann) is not None:
        sub = _entry_model(ann).model_fields.get(parts[2])
        ann = sub.annotation if sub is not None else str
        return str if ann == (str | None) else ann
    for _ in range(field.count("[")):  # an item of a list field
        args = get_args(ann)
        ann = args[0] if args else str
    return ann


def is_list_path_field(field: str) -> bool:
    """Whether a config field holds a list (of data paths, image path lists, or entries), each item
    checked like a path field and named by its index ("dataset.extra[1].path")."""
    from typing import get_origin

    return field in path_fields() and get_origin(_annotation(field)) is list


def unpacked_paths(field: str, value: Any) -> list[tuple[str, str]]:
    """The (field, path) pairs of a checked value that name a dataset (folder or ZIP): a data path, each
    of a list of them, each entry's data path that is not inside its folder; never image files."""
    if path_fields().get(_top(field)) != "data":
        return []
    if isinstance(value, list):
        return [pair for i, v in enumerate(value) for pair in unpacked_paths(f"{field}[{i}]", v)]
    if isinstance(value, Mapping):
        model = _annotation(field)
        keys = _entry_fields(model) if _is_model(model) else {}
        return [
            (f"{field}.{k}", str(value[k]))
            for k, r in keys.items()
            if r == "data"
            and isinstance(value.get(k), str)
            and f"{_INDEX.sub('[]', field)}.{k}" not in INSIDE_DATASET
        ]
    return [(field, value)] if isinstance(value, str) else []


def refused_root(path: str | Path) -> str | None:
    """Why ``path`` cannot hold runs (the filesystem root, the home folder): the same rule as a run's
    output.dir, from the schema, so ``ui --runs-dir`` and ``train`` refuse alike. None when it can."""
    from flux2_lora.config import OutputSection
    from flux2_lora.config.io import validate_section

    _, issues = validate_section(OutputSection, {"dir": str(path)})
    errors = [i.message for i in issues if i.level == "error"]
    return errors[0] if errors else None


@dataclass(frozen=True)
class AppPaths:
    """The UI's folders, resolved once at start."""

    runs: Path
    data_dirs: tuple[Path, ...]
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES

    @classmethod
    def create(
        cls,
        runs_dir: str | Path = "runs",
        data_dirs: Iterable[str | Path] | None = None,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    ) -> AppPaths:
        """The folders resolved and created; ValueError (nothing created) for a runs folder that is the
        filesystem root, the home folder, or a file."""
        runs = Path(runs_dir).expanduser().resolve()
        why = refused_root(runs)
        if why:
            raise ValueError(why)
        if runs.exists() and not runs.is_dir():
            raise ValueError(f"{runs} is a file, not a folder")
        dirs = tuple(Path(d).expanduser().resolve() for d in (data_dirs if data_dirs else [Path.cwd()]))
        paths = cls(runs, dirs, int(max_upload_bytes))
        for p in (paths.runs, paths.uploads, paths.templates, paths.generated):
            p.mkdir(parents=True, exist_ok=True)
        return paths

    @property
    def uploads(self) -> Path:
        return self.runs / "uploads"

    @property
    def templates(self) -> Path:
        return self.runs / "templates"

    @property
    def generated(self) -> Path:
        return self.runs / "generated"

    @property
    def read_roots(self) -> tuple[Path, ...]:
        return (self.runs, self.uploads, *self.data_dirs)

    def _flag_hint(self, real: Path | None, text: str) -> str:
        folder = real if real is not None and real.is_dir() else Path(text).expanduser().parent
        return f"start the UI with --data-dir {folder} to allow it"

    def readable(self, field: str, value: str) -> Path:
        """A dataset or model path typed into the UI, resolved; PathRefused outside the allowed roots."""
        real = resolve_inside(value, self.read_roots)
        if real is None:
            roots = ", ".join(str(r) for r in (self.runs, *self.data_dirs))
            try:
                outside = Path(str(value)).expanduser().resolve()
            except (OSError, RuntimeError, ValueError):
                outside = None
            raise PathRefused(
                field,
                f"{value} is outside the folders this UI may read ({roots}); "
                + self._flag_hint(outside, str(value)),
            )
        return real

    def model_source(self, value: str) -> str:
        """model.path as the trainer should get it: 'demo', a hub id, or a resolved allowed folder."""
        text = (value or "").strip()
        if is_demo(text):
            return "demo"
        local = Path(text).expanduser()
        if _HUB_ID.match(text) and not local.exists():
            return text  # a hub id: the trainer downloads it into the Hugging Face cache
        return str(self.readable("model.path", text))

    def run_dir(self, value: str, field: str = "output.dir") -> Path:
        """A run directory for writing: inside the runs folder, not the runs folder itself, not one of
        its reserved folders (uploads, templates, generated), not a hidden folder (a trainer's .work, where
        it unpacks datasets) and not inside another run: what a trainer resumes from there is its own."""
        text = (value or "").strip()
        p = Path(text).expanduser()
        if text and not p.is_absolute():
            # 'runs/x' and 'x' both mean <runs folder>/x (the CLI's default is runs/<name>).
            parts = p.parts[1:] if p.parts[:1] == ("runs",) else p.parts
            p = self.runs.joinpath(*parts) if parts else self.runs
        real = resolve_inside(p, [self.runs])
        reserved = [self.runs / r for r in RESERVED]
        if (
            real is None
            or real == self.runs
            or any(real == r or r in real.parents for r in reserved)
            or self._inside_run(real)
        ):
            raise PathRefused(
                field,
                f"must be a new or existing run folder inside the runs folder {self.runs} (not its "
                f"{', '.join(RESERVED)} folders); start the UI with --runs-dir to use another runs folder",
            )
        return real

    def _inside_run(self, real: Path) -> bool:
        """A hidden folder below the runs folder, or a folder below a run (a run has a status.json or a
        config.yaml; a sweep's folder has neither, so its trials are runs)."""
        from flux2_lora import runs

        rel = real.relative_to(self.runs).parts
        if any(part.startswith(".") for part in rel):
            return True
        above = [self.runs.joinpath(*rel[:i]) for i in range(1, len(rel))]
        return any((a / runs.STATUS_FILE).exists() or (a / runs.CONFIG_FILE).exists() for a in above)

    def checkpoint(self, run: Path, value: str) -> str:
        """A resume request for ``run``: 'latest' or 'auto' (the trainer looks in the run's checkpoints/),
        or one complete checkpoint in ``run/checkpoints/`` (resolved). PathRefused for anything else, e.g.
        a checkpoint inside an upload, a dataset or a run's .work folder."""
        from flux2_lora import runs

        text = (value or "").strip()
        own = run / runs.CHECKPOINTS_DIR
        if own.is_symlink() or (own.exists() and own.resolve() != own):
            raise PathRefused("resume", f"{own} is a link; this UI resumes only from checkpoints it wrote")
        if text in ("latest", "auto"):
            return text
        real = resolve_inside(text, [own], base=run)
        if real is None or real not in [p.resolve() for p in runs.list_checkpoints(run)]:
            raise PathRefused(
                "resume",
                f"must be 'latest' or a checkpoint in {own} (checkpoint-<step>); this UI resumes only "
                "from checkpoints its trainer wrote",
            )
        return str(real)

    def checked_paths(self, config: Mapping[str, Any], *, where: str = "") -> dict[str, dict[str, Any]]:
        """Every path field set in ``config`` (a config mapping) checked by its role and resolved: the
        {"section": {"key": value}} to write over the config, so what was checked is what runs.
        PathRefused (its field prefixed with ``where``) for the first one outside the allowed folders."""
        out: dict[str, dict[str, Any]] = {}
        for dotted in path_fields():
            section, _, key = dotted.partition(".")
            sec = config.get(section) if isinstance(config, Mapping) else None
            value = sec.get(key) if isinstance(sec, Mapping) else None
            if value is None:
                continue
            try:
                out.setdefault(section, {})[key] = self.checked_value(dotted, value)
            except PathRefused as e:
                raise PathRefused(where + e.field, e.message) from None
        return out

    def checked_value(self, field: str, value: Any, role: str | None = None) -> Any:
        """One path field's value checked by its role (:func:`path_fields`) and resolved. A list field
        item by item, and a list of entries (dataset.extra) each entry's path fields, naming the item
        ("dataset.extra[1].path", "validation.references[0][1]")."""
        from typing import get_origin

        ann = _annotation(field)
        role = role or path_fields().get(_top(field), "data")
        if get_origin(ann) is list:
            if not isinstance(value, list):
                what = "image path lists" if role == "image" else "paths" if ann == list[str] else "entries"
                raise PathRefused(field, f"must be a list of {what}, got {type(value).__name__}")
            return [self.checked_value(f"{field}[{i}]", v, role) for i, v in enumerate(value)]
        if _is_model(ann):
            if not isinstance(value, Mapping):
                raise PathRefused(field, f"must be a mapping of entry fields, got {type(value).__name__}")
            out = dict(value)
            for key, sub in _entry_fields(ann).items():
                if out.get(key) is not None:
                    out[key] = self.checked_value(f"{field}.{key}", out[key], sub)
            return out
        if not isinstance(value, str):
            raise PathRefused(field, f"must be a path (text), got {type(value).__name__}")
        if role == "model":
            return self.model_source(value)
        if role == "output":
            return str(self.run_dir(value, field))
        if role == "image":
            return str(self.readable(field, value))
        if not value.strip() or is_builtin_dataset(value):
            return value  # off (an empty eval folder), or a built-in demo dataset
        inside = _INDEX.sub("[]", field) in INSIDE_DATASET
        if inside and not Path(value.strip()).expanduser().is_absolute():
            return value  # relative to the dataset folder, which is checked itself
        return str(self.readable(field, value))

    def existing_run(self, value: str) -> Path | None:
        """A run directory named by a request (monitor, stop, resume, download), or None."""
        try:
            return self.run_dir(value, "run")
        except PathRefused:
            return None

    def served_file(self, value: str) -> Path | None:
        """A file the UI may send to a client: inside the runs folder (runs, samples, LoRAs, images)."""
        real = resolve_inside(value, [self.runs], base=self.runs)
        return real if real is not None and real.is_file() else None


def parse_size(text: str) -> int:
    """'2GiB', '500MB', '2g', '1048576' → bytes (binary units; ValueError with the accepted forms)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text).lower())
    if not m:
        raise ValueError(f"{text!r} is not a size; use e.g. 500MiB, 2GiB or a number of bytes")
    n = float(m.group(1)) * (1 << (10 * " kmgt".index(m.group(2) or " ")))
    if n < 1:
        raise ValueError(f"{text!r}: the size must be at least 1 byte")
    return int(n)
