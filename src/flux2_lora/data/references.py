"""Edit datasets: which reference (input) images belong to each target, and at what size they train
(PIL only, no torch).

Two layouts, both inside what a ZIP carries:

- a reference folder (``dataset.reference_path``; a relative path is inside the dataset folder) whose files
  pair with the targets by relative stem: ``x.png`` is the one reference of target ``x``; ``x_0.png``,
  ``x_1.png``, … are its several references, in order;
- a ``metadata.jsonl`` in the dataset folder, one JSON object a line: ``{"file_name": "x.png", "text":
  "the instruction", "references": ["inputs/x.png"]}`` (paths relative to the dataset folder).

Every path stays inside its folder: absolute paths and ``..`` in metadata.jsonl are refused by line number,
and a symbolic link that leads out of the folder is not read. A reference is never a target. Nothing here
raises on bad input: each problem is returned against the file (or metadata line) it concerns.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from flux2_lora.display import escape

METADATA_FILE = "metadata.jsonl"
MAX_METADATA_BYTES = 16 << 20  # 16 MiB: ~100k lines of captions; more means a wrong file
# FLUX.2's reference caps (BFL's reference code): one reference up to 2024² pixels, each of several up to
# 1024²; sides a multiple of 16 (a token covers 16×16 pixels), at least 64, aspect at most 8.
SINGLE_REFERENCE_PIXELS = 2024 * 2024
MULTI_REFERENCE_PIXELS = 1024 * 1024
REFERENCE_MULTIPLE = 16
MIN_REFERENCE_SIDE = 64
MAX_REFERENCE_ASPECT = 8
_NUMBERED = re.compile(r"^(.*)_(\d+)$")
_DRIVE = re.compile(r"^[A-Za-z]:")

Layout = Literal["none", "folder", "metadata"]


def reference_cap(count: int, max_pixels: int = 0) -> int:
    """The largest area (pixels) a reference trains at: ``dataset.reference_max_pixels``, or FLUX.2's caps."""
    if max_pixels:
        return max_pixels
    return SINGLE_REFERENCE_PIXELS if count <= 1 else MULTI_REFERENCE_PIXELS


def reference_size(width: int, height: int, count: int, max_pixels: int = 0) -> tuple[int, int]:
    """(width, height) a reference of this size trains and samples at, when it is one of ``count``: scaled
    down to the cap keeping its aspect (never up), then each side floored to a multiple of 16 — the sizes
    diffusers' Flux2Pipeline gives its ``image=`` inputs at its 1024² cap."""
    cap = reference_cap(count, max_pixels)
    if width * height > cap:
        scale = math.sqrt(cap / (width * height))
        width, height = int(width * scale), int(height * scale)
    m = REFERENCE_MULTIPLE
    return max(m, width // m * m), max(m, height // m * m)


def reference_tokens(sizes: list[tuple[int, int]], max_pixels: int = 0) -> int:
    """Transformer tokens of one target's references (original sizes, in order)."""
    total = 0
    for w, h in sizes:
        rw, rh = reference_size(w, h, len(sizes), max_pixels)
        total += (rw // REFERENCE_MULTIPLE) * (rh // REFERENCE_MULTIPLE)
    return total


def size_problem(width: int, height: int) -> str | None:
    """Why a reference of this size cannot be used (FLUX.2's pipelines refuse it too), or None."""
    if min(width, height) < MIN_REFERENCE_SIDE:
        return f"reference is {width}x{height}; FLUX.2 needs both sides at least {MIN_REFERENCE_SIDE} px"
    if max(width, height) > MAX_REFERENCE_ASPECT * min(width, height):
        return f"reference is {width}x{height}, wider than {MAX_REFERENCE_ASPECT}:1; crop it"
    return None


def count_problem(count: int, limit: int, variant_title: str) -> str | None:
    """The reference count limit of a variant (BFL: [klein] up to 4 references)."""
    if count > limit:
        return f"a target has {count} references; {variant_title} takes at most {limit}"
    return None


@dataclass
class ReferenceSummary:
    """What ``dataset check`` reports about the pairs."""

    layout: Layout = "none"
    folder: str = ""  # the reference folder, when the folder layout is used
    pairs: int = 0  # usable targets with at least one reference
    without: list[str] = field(default_factory=list)  # targets without references
    orphans: list[str] = field(default_factory=list)  # references no target uses
    counts: dict[int, int] = field(default_factory=dict)  # references per target → targets
    sizes: dict[str, int] = field(default_factory=dict)  # "WxH" as trained → references
    max_tokens: int = 0  # the most reference tokens one target brings

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "folder": self.folder,
            "pairs": self.pairs,
            "targets_without_references": self.without,
            "orphan_references": self.orphans,
            "references_per_target": {str(k): v for k, v in sorted(self.counts.items())},
            "reference_sizes": dict(sorted(self.sizes.items())),
            "max_reference_tokens": self.max_tokens,
        }

    def format(self) -> list[str]:
        if self.layout == "none":
            return []
        where = f"folder {escape(self.folder)}" if self.layout == "folder" else METADATA_FILE
        counts = ", ".join(f"{n} × {k}" for k, n in sorted(self.counts.items())) or "none"
        sizes = ", ".join(f"{s} ({n})" for s, n in sorted(self.sizes.items())) or "none"
        lines = [
            f"References ({where}):",
            f"  pairs:             {self.pairs}",
            f"  without reference: {len(self.without)}",
            f"  orphan references: {len(self.orphans)}",
            f"  per target:        {counts} (targets × references)",
            f"  trained sizes:     {sizes}",
            f"  reference tokens:  up to {self.max_tokens} per sample",
        ]
        return lines


@dataclass
class ReferencePlan:
    """The pairing, before any image is opened: the scan checks the files it names."""

    summary: ReferenceSummary
    references: dict[Path, list[Path]] = field(default_factory=dict)  # target → its references
    captions: dict[Path, str] = field(default_factory=dict)  # metadata.jsonl's "text" by target
    excluded: set[Path] = field(default_factory=set)  # images that are references, never targets
    problems: list[tuple[str, str, Literal["error", "warning"]]] = field(default_factory=list)
    folder_root: Path | None = None  # the reference folder references must stay inside


def _stem_key(path: Path, base: Path) -> str:
    return path.relative_to(base).with_suffix("").as_posix()


def _inside(path: Path, folder_real: Path) -> bool:
    real = Path(os.path.realpath(path))
    return real == folder_real or folder_real in real.parents


def resolve_reference_folder(root: Path, reference_path: str) -> Path:
    """``dataset.reference_path`` as a folder: relative paths are inside the dataset folder."""
    p = Path(reference_path.strip()).expanduser()
    return p if p.is_absolute() else root / p


def plan_references(root: Path, images: list[Path], reference_path: str, image_walk: Any) -> ReferencePlan:
    """Pair the dataset's images (``images``, found under ``root``) with their references.

    ``image_walk(folder)`` lists a folder's images as the scan does (hidden files and run outputs skipped).
    Raises nothing: a missing or escaping reference folder is an error problem, and no pair is made."""
    plan = ReferencePlan(ReferenceSummary())
    meta = root / METADATA_FILE
    has_meta = meta.is_file() or meta.is_symlink()
    if reference_path.strip():
        _plan_folder(plan, root, images, reference_path, image_walk)
        if has_meta:
            _plan_metadata(plan, root, images, meta, with_references=False)
    elif has_meta:
        _plan_metadata(plan, root, images, meta, with_references=True)
    return plan


def _plan_folder(
    plan: ReferencePlan, root: Path, images: list[Path], reference_path: str, image_walk: Any
) -> None:
    folder = resolve_reference_folder(root, reference_path)
    label = f"dataset.reference_path ({escape(reference_path)})"
    real_root = Path(os.path.realpath(root))
    if not Path(reference_path.strip()).expanduser().is_absolute() and not _inside(folder, real_root):
        plan.problems.append((label, "leads outside the dataset folder; no references read", "error"))
        return
    if not folder.is_dir():
        plan.problems.append((label, f"{escape(folder)} is not a folder; no references read", "error"))
        return
    plan.summary.layout, plan.summary.folder = "folder", str(folder)
    plan.folder_root = Path(os.path.realpath(folder))
    refs = image_walk(folder)
    if _inside(folder, real_root):  # a reference folder inside the dataset holds no targets
        ref_set = {Path(os.path.abspath(p)) for p in refs}
        plan.excluded |= {p for p in images if Path(os.path.abspath(p)) in ref_set}
    by_key: dict[str, list[Path]] = {}
    for r in refs:
        by_key.setdefault(_stem_key(r, folder), []).append(r)
    used: set[Path] = set()
    for target in images:
        if target in plan.excluded:
            continue
        key = _stem_key(target, root)
        single = by_key.get(key, [])
        numbered: dict[int, list[Path]] = {}
        prefix = key + "_"
        for k, files in by_key.items():
            if k.startswith(prefix) and k[len(prefix) :].isdigit():
                numbered.setdefault(int(k[len(prefix) :]), []).extend(files)
        name = escape(target.relative_to(root).as_posix())
        chosen = _choose(single, numbered, name, plan)
        if chosen is None:
            continue
        if chosen:
            plan.references[target] = chosen
            used |= set(chosen)
    plan.summary.orphans = [escape(r.relative_to(folder).as_posix()) for r in refs if r not in used]


def _choose(
    single: list[Path], numbered: dict[int, list[Path]], name: str, plan: ReferencePlan
) -> list[Path] | None:
    """The target's references in order; None (and a problem) when its files are ambiguous."""
    if len(single) > 1 or any(len(v) > 1 for v in numbered.values()):
        files = ", ".join(sorted(p.name for p in single + [q for v in numbered.values() for q in v]))
        plan.problems.append((name, f"several reference files share a name ({files}); keep one", "error"))
        return None
    if single and numbered:
        plan.problems.append(
            (
                name,
                f"has both {single[0].name} and numbered references (_0, _1, …); use one layout",
                "error",
            )
        )
        return None
    if single:
        return single
    if not numbered:
        return []
    order = sorted(numbered)
    if order != list(range(len(order))):
        missing = next(i for i in range(len(order) + 1) if i not in numbered)
        plan.problems.append(
            (
                name,
                f"numbered references skip _{missing} (found {', '.join(f'_{i}' for i in order)})",
                "error",
            )
        )
        return None
    return [numbered[i][0] for i in order]


def _bad_relative(value: Any) -> str | None:
    """Why a metadata.jsonl path is refused: it must be a relative path inside the dataset folder."""
    if not isinstance(value, str) or not value.strip():
        return "must be a non-empty string"
    norm = value.replace("\\", "/")
    if norm.startswith("/") or _DRIVE.match(norm) or norm.startswith("~"):
        return f"{escape(value)!r} is an absolute path; give it relative to the dataset folder"
    if ".." in PurePosixPath(norm).parts:
        return f"{escape(value)!r} points outside the dataset folder ('..')"
    if "\x00" in value:
        return "holds a NUL character"
    return None


def _plan_metadata(
    plan: ReferencePlan, root: Path, images: list[Path], meta: Path, *, with_references: bool
) -> None:
    where = METADATA_FILE
    real_root = Path(os.path.realpath(root))
    if not _inside(meta, real_root):
        plan.problems.append(
            (where, "is a symbolic link that leads outside the dataset folder; not read", "error")
        )
        return
    try:
        size = meta.stat().st_size
        if size > MAX_METADATA_BYTES:
            plan.problems.append((where, f"is {size / 1e6:.1f} MB, above the 16 MB limit; not read", "error"))
            return
        raw = meta.read_bytes().removeprefix(b"\xef\xbb\xbf")
        text = raw.decode("utf-8")
    except OSError as e:
        plan.problems.append((where, f"cannot be read ({e.strerror or e})", "error"))
        return
    except UnicodeDecodeError as e:
        plan.problems.append((where, f"is not valid UTF-8 (at byte {e.start}); re-save it as UTF-8", "error"))
        return
    by_rel = {p.relative_to(root).as_posix(): p for p in images}
    seen: dict[str, int] = {}
    referenced: list[Path] = []
    listed_refs = ignored_refs = False
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue

        def bad(message: str, n: int = n) -> None:
            plan.problems.append((where, f"line {n}: {message}; line skipped", "error"))

        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            bad(f"not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(entry, dict):
            bad("not a JSON object")
            continue
        name = entry.get("file_name")
        why = _bad_relative(name)
        if why:
            bad(f"file_name {why}")
            continue
        rel = PurePosixPath(str(name).replace("\\", "/")).as_posix()
        target = by_rel.get(rel)
        if target is None:
            bad(f"file_name {escape(rel)!r} is not an image of the dataset folder")
            continue
        if rel in seen:
            bad(f"file_name {escape(rel)!r} is listed again (first on line {seen[rel]})")
            continue
        caption = entry.get("text", entry.get("caption"))
        if caption is not None and not isinstance(caption, str):
            bad("text must be a string")
            continue
        refs_value = entry.get("references")
        refs: list[Path] = []
        ignored_refs |= refs_value is not None and not with_references
        if refs_value is not None and with_references:
            listed_refs = True
            if not isinstance(refs_value, list) or not all(isinstance(r, str) for r in refs_value):
                bad("references must be a list of paths")
                continue
            whys = [w for w in (_bad_relative(r) for r in refs_value) if w]
            if whys:
                bad(f"reference {whys[0]}")
                continue
            refs = [root / PurePosixPath(r.replace("\\", "/")) for r in refs_value]
            escaping = [r for r in refs if not _inside(r, real_root)]
            if escaping:
                bad(
                    f"reference {escape(escaping[0].relative_to(root).as_posix())!r} is a symbolic link "
                    "that leads outside the dataset folder"
                )
                continue
            if rel in {r.relative_to(root).as_posix() for r in refs}:
                bad("a target cannot be its own reference")
                continue
        seen[rel] = n
        if caption is not None:
            plan.captions[target] = caption.strip()
        if refs:
            plan.references[target] = refs
            referenced += refs
    if ignored_refs:
        plan.problems.append(
            (
                where,
                "its 'references' are ignored: dataset.reference_path is set and pairs by file name",
                "warning",
            )
        )
    if listed_refs or plan.references:
        plan.summary.layout = "metadata"
        ref_abs = {Path(os.path.abspath(r)) for r in referenced}
        plan.excluded |= {p for p in images if Path(os.path.abspath(p)) in ref_abs}
        # A target named as another's reference is a reference only: it would train twice otherwise.
        for t in list(plan.references):
            if t in plan.excluded:
                del plan.references[t]
                plan.problems.append(
                    (
                        escape(t.relative_to(root).as_posix()),
                        "is a reference of another target; not a target",
                        "warning",
                    )
                )
        plan.folder_root = real_root


def summarise(
    plan: ReferencePlan,
    root: Path,
    targets: list[Path],
    sizes: dict[Path, tuple[int, int]],
    max_pixels: int,
) -> None:
    """Counts and trained sizes of the pairs the scan kept (``targets``: usable targets; ``sizes``: the
    references' original sizes)."""
    s = plan.summary
    if s.layout == "none":
        return
    counts: Counter[int] = Counter()
    trained: Counter[str] = Counter()
    for t in targets:
        refs = plan.references.get(t, [])
        if not refs:
            s.without.append(escape(t.relative_to(root).as_posix()))
            continue
        s.pairs += 1
        counts[len(refs)] += 1
        dims = [sizes[r] for r in refs]
        for w, h in dims:
            rw, rh = reference_size(w, h, len(dims), max_pixels)
            trained[f"{rw}x{rh}"] += 1
        s.max_tokens = max(s.max_tokens, reference_tokens(dims, max_pixels))
    s.counts, s.sizes = dict(counts), dict(trained)


def oriented_size(path: Path) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header alone; OSError-like failures raise."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # these orientations swap width and height
                w, h = h, w
    return w, h


def trained_sizes(
    references: tuple[Path, ...] | list[Path], max_pixels: int = 0
) -> tuple[tuple[int, int], ...]:
    """The (width, height) each of a target's references trains at."""
    n = len(references)
    return tuple(reference_size(*oriented_size(r), n, max_pixels) for r in references)


def largest_reference_tokens(dataset_path: str, reference_path: str, max_pixels: int) -> int:
    """The most reference tokens one sample of the dataset brings (image headers only; 0 for a
    text-to-image dataset, or one that is not a folder yet: a ZIP is counted once unpacked, by the
    trainer). What the memory estimate adds to the target's tokens."""
    from flux2_lora.data.demo_edit import DEMO_EDIT_SIZE, DEMO_EDIT_SWATCH, is_demo_edit

    if is_demo_edit(dataset_path):
        return reference_tokens(
            [(DEMO_EDIT_SIZE, DEMO_EDIT_SIZE), (DEMO_EDIT_SWATCH, DEMO_EDIT_SWATCH)], max_pixels
        )
    root = Path(dataset_path.strip()).expanduser()
    if not dataset_path.strip() or not root.is_dir():
        return 0
    if not reference_path.strip() and not (root / METADATA_FILE).is_file():
        return 0  # text-to-image: nothing to walk
    folder = resolve_reference_folder(root, reference_path) if reference_path.strip() else None
    stamps = []
    for p in (root, folder, root / METADATA_FILE):
        try:
            stamps.append(p.stat().st_mtime if p is not None else 0.0)
        except OSError:
            stamps.append(0.0)
    return _largest_reference_tokens(str(root), reference_path, max_pixels, tuple(stamps))


@functools.lru_cache(maxsize=16)
def _largest_reference_tokens(
    root: str, reference_path: str, max_pixels: int, stamps: tuple[float, ...]
) -> int:
    from flux2_lora.data.scan import walk_images

    base = Path(root)
    plan = plan_references(base, walk_images(base), reference_path, walk_images)
    best = 0
    for refs in plan.references.values():
        try:
            sizes = [oriented_size(r) for r in refs]
        except Exception:  # an unreadable reference: the scan reports it, and the pair does not train
            continue
        best = max(best, reference_tokens(sizes, max_pixels))
    return best
