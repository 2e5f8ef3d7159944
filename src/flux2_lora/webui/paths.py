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
# How a path field's value is checked; every other path field is data the trainer reads.
PATH_ROLES = {"model.path": "model", "output.dir": "output"}
# Data paths that, when relative, name a folder inside the dataset folder (the scan keeps them there).
INSIDE_DATASET = ("dataset.reference_path",)


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
    or a readable folder), "output" (a run folder to write) or "data" (a readable dataset folder or ZIP)."""
    from flux2_lora.config import SECTIONS

    out = {}
    for section, cls in SECTIONS.items():
        for key, info in cls.model_fields.items():
            if info.annotation == list[str] and _LIST_PATH_NAME.search(key):
                out[f"{section}.{key}"] = "data"  # a list of data paths (dataset.extra_paths)
                continue
            if info.annotation is not str:
                continue
            longest = max((getattr(m, "max_length", 0) or 0 for m in info.metadata), default=0)
            if _PATH_NAME.search(key) or longest >= PATH_MAX:
                out[f"{section}.{key}"] = PATH_ROLES.get(f"{section}.{key}", "data")
    return out


def is_list_path_field(field: str) -> bool:
    """Whether a config field holds a list of data paths (each entry checked like a path field)."""
    section, _, key = field.partition(".")
    return bool(_LIST_PATH_NAME.search(key)) and path_fields().get(field) == "data"


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
        val = config.get("validation") if isinstance(config, Mapping) else None
        refs = val.get("references") if isinstance(val, Mapping) else None
        if refs:  # image paths in a list field: not a str field, so not in path_fields()
            try:
                out.setdefault("validation", {})["references"] = self.checked_references(refs)
            except PathRefused as e:
                raise PathRefused(where + e.field, e.message) from None
        return out

    def checked_value(self, field: str, value: Any, role: str | None = None) -> Any:
        """One path field's value checked by its role (:func:`path_fields`) and resolved; a list field
        (dataset.extra_paths) item by item, naming the entry ("dataset.extra_paths[1]")."""
        if is_list_path_field(field):
            if not isinstance(value, list):
                raise PathRefused(field, f"must be a list of paths, got {type(value).__name__}")
            return [self.checked_value(f"{field}[{i}]", v, "data") for i, v in enumerate(value)]
        role = role or path_fields().get(field, "data")
        if not isinstance(value, str):
            raise PathRefused(field, f"must be a path (text), got {type(value).__name__}")
        if role == "model":
            return self.model_source(value)
        if role == "output":
            return str(self.run_dir(value, field))
        if not value.strip() or is_builtin_dataset(value):
            return value  # off (an empty eval folder), or a built-in demo dataset
        if field in INSIDE_DATASET and not Path(value.strip()).expanduser().is_absolute():
            return value  # relative to the dataset folder, which is checked itself
        return str(self.readable(field, value))

    def checked_references(self, value: Any, field: str = "validation.references") -> list[list[str]]:
        """validation.references (a list of path lists) with every path readable and resolved; PathRefused
        naming the entry ("validation.references[1][0]") for one outside the allowed folders."""
        if not isinstance(value, list) or not all(isinstance(g, list) for g in value):
            raise PathRefused(field, "must be a list of lists of image paths")
        out = []
        for i, group in enumerate(value):
            row = []
            for k, item in enumerate(group):
                if not isinstance(item, str):
                    raise PathRefused(
                        f"{field}[{i}][{k}]", f"must be a path (text), got {type(item).__name__}"
                    )
                row.append(str(self.readable(f"{field}[{i}][{k}]", item)))
            out.append(row)
        return out

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
