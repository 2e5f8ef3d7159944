"""Scanning and validating a dataset folder (PIL only, no torch).

A scan never raises on a bad file: each problem is recorded against the file it concerns, and the file is
skipped (error) or kept (warning). Only the folder itself being unusable raises :class:`DatasetError`.
Images are checked by decoding them (JPEGs at reduced scale), so a file that passes here also loads in
training.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image, UnidentifiedImageError

from flux2_lora import runs
from flux2_lora.display import escape

if TYPE_CHECKING:
    from flux2_lora.data.references import ReferenceSummary

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
IGNORED_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})
MAX_CAPTION_BYTES = 1 << 20  # a caption is a sentence; a megabyte means a wrong file
_EXIF_ORIENTATION = 0x0112
_ROTATED_ORIENTATIONS = frozenset({5, 6, 7, 8})  # these swap width and height

Severity = Literal["error", "warning"]


class DatasetError(Exception):
    """A dataset that cannot be used at all; the message names the file or config field."""


@dataclass
class Problem:
    file: str  # relative to the dataset root, with / separators
    message: str
    severity: Severity


@dataclass
class ImageItem:
    path: Path
    caption: str
    caption_source: Literal["file", "default"]
    width: int  # after EXIF orientation
    height: int
    # Edit LoRAs: the target's reference (input) images, in order; () for text-to-image.
    references: tuple[Path, ...] = ()


@dataclass
class DatasetReport:
    root: Path
    items: list[ImageItem] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    num_images_found: int = 0
    num_captions: int = 0
    num_missing_captions: int = 0
    num_unused_captions: int = 0
    references: ReferenceSummary | None = None  # an edit dataset's pairs (None: no reference layout)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def reference_folder_error(self) -> str | None:
        """Why the reference folder itself cannot be used (missing, or climbing out of the dataset), or
        None: the run would otherwise train text-to-image without a word."""
        return next((p.message for p in self.problems if p.file.startswith("dataset.reference_path")), None)

    def problems_by_file(self) -> dict[str, list[Problem]]:
        grouped: dict[str, list[Problem]] = defaultdict(list)
        for p in self.problems:
            grouped[p.file].append(p)
        return dict(grouped)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "num_images_found": self.num_images_found,
            "num_items": len(self.items),
            "num_captions": self.num_captions,
            "num_missing_captions": self.num_missing_captions,
            "num_unused_captions": self.num_unused_captions,
            "num_errors": len(self.errors),
            "num_warnings": len(self.warnings),
            **({"references": self.references.to_dict()} if self.references else {}),
            "problems": {
                f: [{"severity": p.severity, "message": p.message} for p in ps]
                for f, ps in self.problems_by_file().items()
            },
        }

    def format(self) -> str:
        lines = [
            f"Dataset: {escape(self.root)}",
            f"  images found:      {self.num_images_found}",
            f"  usable images:     {len(self.items)}",
            f"  caption files:     {self.num_captions}",
            f"  missing captions:  {self.num_missing_captions}",
            f"  unused captions:   {self.num_unused_captions}",
        ]
        if self.references is not None:
            lines += self.references.format()
        if not self.problems:
            lines.append("No problems found.")
            return "\n".join(lines)
        ne, nw = len(self.errors), len(self.warnings)
        lines.append(f"Problems ({ne} error{'s' * (ne != 1)} — skipped, {nw} warning{'s' * (nw != 1)}):")
        for name, ps in self.problems_by_file().items():
            lines.append(f"  {name}")
            lines.extend(f"    {p.severity}: {p.message}" for p in ps)
        return "\n".join(lines)


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_NAMES  # also macOS "._x.jpg" resource forks


# What a training run writes into its folder; never training data, even when a run sits inside a dataset.
RUN_OUTPUT_DIRS = frozenset(
    {runs.SAMPLES_DIR, runs.CHECKPOINTS_DIR, runs.PREVIOUS_DIR, runs.TENSORBOARD_DIR, "wandb"}
)
_RUN_MARKERS = frozenset({runs.LOG_FILE, runs.METRICS_FILE, runs.LOCK_FILE})


def is_run_dir(names: set[str] | frozenset[str]) -> bool:
    """Whether a folder with these entries is a training run's directory (see :mod:`flux2_lora.runs`)."""
    return runs.STATUS_FILE in names or (
        runs.CONFIG_FILE in names and bool(names & (_RUN_MARKERS | RUN_OUTPUT_DIRS))
    )


def _walk(root: Path, caption_ext: str, skipped: list[str] | None = None) -> tuple[list[Path], list[Path]]:
    """Image and caption files under root (recursive, sorted, hidden entries skipped). The output folders
    of a run directory found on the way are not entered; their paths go to ``skipped``."""
    images: list[Path] = []
    captions: list[Path] = []
    # followlinks=False (the default): a symlinked folder is listed but never entered.
    for dirpath, dirnames, filenames in os.walk(root):
        if is_run_dir(set(dirnames) | set(filenames)):
            for d in sorted(set(dirnames) & RUN_OUTPUT_DIRS):
                if skipped is not None:
                    skipped.append(Path(dirpath, d).relative_to(root).as_posix())
            dirnames[:] = [d for d in dirnames if d not in RUN_OUTPUT_DIRS]
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))  # in place: prunes the walk
        for name in sorted(filenames):
            if _hidden(name):
                continue
            suffix = os.path.splitext(name)[1].lower()
            if suffix in IMAGE_EXTENSIONS:
                images.append(Path(dirpath, name))
            elif suffix == caption_ext:
                captions.append(Path(dirpath, name))
    key = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    return sorted(images, key=key), sorted(captions, key=key)


def walk_images(folder: Path) -> list[Path]:
    """The images under ``folder`` as a scan finds them (sorted; hidden files and run outputs skipped)."""
    return _walk(folder, ".txt")[0]


def _refused(path: Path, real_root: Path) -> str | None:
    """Why a file must not be opened at all: a symbolic link that leads out of the dataset folder (it
    would read any file of the machine as training data), or not a regular file (a pipe would block)."""
    real = Path(os.path.realpath(path))
    if real != real_root and real_root not in real.parents:
        return "is a symbolic link that leads outside the dataset folder; not read"
    try:
        mode = os.stat(real).st_mode
    except OSError:
        return None  # a dangling link: reading it reports the error
    if not stat.S_ISREG(mode):
        return "is not a regular file (a pipe, device or folder); not read"
    return None


def _inspect_image(path: Path, max_pixels: int) -> tuple[int, int, bool] | str:
    """(width, height, has_transparent_pixels) after EXIF orientation, or an error message."""
    try:
        with warnings.catch_warnings():
            # PIL warns between its own limit and twice it; our own max_pixels check below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # e.g. palette transparency notes
            with Image.open(path) as im:
                w, h = im.size  # header only: nothing decoded yet
                if w * h > max_pixels:
                    return (
                        f"image is {w}x{h} ({w * h / 1e6:.0f} MP), above the {max_pixels / 1e6:.0f} MP limit "
                        "(possible decompression bomb); downscale it"
                    )
                if w < 1 or h < 1:
                    return f"image has an empty size {w}x{h}"
                orientation = im.getexif().get(_EXIF_ORIENTATION)
                # Decoding finds truncated/corrupt data; JPEGs decode at 1/8 scale to keep scans fast.
                im.draft(im.mode, (max(1, w // 8), max(1, h // 8)))
                im.load()
                transparent = _has_transparency(im)
    except Image.DecompressionBombError as e:
        return f"image is too large to open safely (possible decompression bomb): {e}"
    except UnidentifiedImageError:
        return "not an image (the file content is not a recognised image format)"
    except Exception as e:  # fuzzed files make PIL's plugins raise almost anything; none may stop a scan
        return f"cannot read the image (corrupt or truncated?): {e}"
    if orientation in _ROTATED_ORIENTATIONS:
        w, h = h, w
    return w, h, transparent


def _has_transparency(im: Image.Image) -> bool:
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        alpha = im.convert("RGBA").getchannel("A")
        low = alpha.getextrema()[0]
        return isinstance(low, (int, float)) and low < 255  # a fully opaque alpha changes nothing
    return False


def read_caption(path: Path) -> str:
    """The normalised caption text; raises ValueError with a user-facing message."""
    size = path.stat().st_size
    if size > MAX_CAPTION_BYTES:
        raise ValueError(f"caption file is {size / 1e6:.1f} MB; a caption should be a short text")
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValueError("caption file is UTF-16; re-save it as UTF-8")
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # Windows editors add a UTF-8 BOM; it is not text
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"caption file is not valid UTF-8 (byte 0x{raw[e.start]:02x} at position {e.start}); "
            "re-save it as UTF-8"
        ) from None
    # CRLF/CR → LF and trailing spaces per line, so captions compare and encode the same on every OS.
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip()


def scan_dataset(
    root: str | Path,
    *,
    caption_extension: str = ".txt",
    default_caption: str = "",
    resolution: int | None = None,
    max_image_pixels: int = 8192 * 8192,
    reference_path: str = "",
    reference_max_pixels: int = 0,
) -> DatasetReport:
    """Find images and their captions under ``root`` and report every problem by file; with a reference
    layout (``reference_path``, or a metadata.jsonl naming references) each item gets its references."""
    from flux2_lora.data.references import plan_references

    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset.path: {escape(root)} does not exist")
    if not root.is_dir():
        raise DatasetError(f"dataset.path: {escape(root)} is not a folder")
    caption_ext = caption_extension.lower()
    skipped: list[str] = []
    images, caption_files = _walk(root, caption_ext, skipped)
    plan = plan_references(root, images, reference_path, walk_images)
    images = [i for i in images if i not in plan.excluded]
    if plan.folder_root is not None and plan.summary.layout == "folder":  # its captions are not targets'
        caption_files = [c for c in caption_files if not _inside(c, plan.folder_root)]
    report = DatasetReport(root=root, num_images_found=len(images), num_captions=len(caption_files))
    by_stem = {p.with_suffix(""): p for p in caption_files}
    used_captions: set[Path] = set()
    source: Literal["file", "default"]
    default_caption = default_caption.strip()
    real_root = Path(os.path.realpath(root))

    def problem(p: Path, message: str, severity: Severity) -> None:
        report.problems.append(Problem(escape(p.relative_to(root).as_posix()), message, severity))

    for name, message, severity in plan.problems:
        report.problems.append(Problem(name, message, severity))
    ref_info: dict[Path, tuple[int, int] | str] = {}

    for folder in skipped:
        report.problems.append(
            Problem(f"{escape(folder)}/", "output of a training run in this folder; not scanned", "warning")
        )

    for img in images:
        # Both the image and its caption are checked, so one scan reports every problem of a pair.
        info = _refused(img, real_root) or _inspect_image(img, max_image_pixels)
        if isinstance(info, str):
            problem(img, info, "error")
        else:
            width, height, transparent = info
            if transparent:
                problem(img, "image has transparency; transparent areas composited on white", "warning")
            if resolution is not None and min(width, height) < resolution:
                problem(
                    img,
                    f"smaller than the training resolution {resolution}: will be upscaled from {width}x{height}",
                    "warning",
                )

        caption, source = default_caption, "default"
        caption_ok = True
        cap_path = by_stem.get(img.with_suffix(""))
        if plan.captions.get(img):  # metadata.jsonl's "text" is the caption (the edit instruction)
            caption, source = plan.captions[img], "file"
            if cap_path is not None:
                used_captions.add(cap_path)
        elif cap_path is None:
            report.num_missing_captions += 1
            expected = escape(img.with_suffix(caption_extension).name)
            if default_caption:
                problem(
                    img, f"no caption file ({expected}); using default caption {default_caption!r}", "warning"
                )
            else:
                problem(
                    img,
                    f"no caption file ({expected}) and no dataset.default_caption; training it without a caption",
                    "warning",
                )
        else:
            used_captions.add(cap_path)
            try:
                refused = _refused(cap_path, real_root)
                if refused:
                    raise ValueError(refused)
                text = read_caption(cap_path)
            except (ValueError, OSError) as e:
                detail = (
                    f"cannot read the caption file ({e.strerror or e})" if isinstance(e, OSError) else str(e)
                )
                problem(cap_path, f"{detail}; skipping {escape(img.name)}", "error")
                caption_ok = False
            else:
                if text:
                    caption, source = text, "file"
                else:
                    fallback = (
                        f"using default caption {default_caption!r}" if default_caption else "no caption"
                    )
                    problem(cap_path, f"caption file is empty; {fallback}", "warning")

        refs = plan.references.get(img, [])
        bad_ref = _check_references(
            refs,
            plan.folder_root or real_root,
            root,
            (max_image_pixels, reference_max_pixels),
            ref_info,
            report,
        )
        if bad_ref:
            problem(img, f"reference {bad_ref} cannot be used; skipping this pair", "error")
        if caption_ok and not isinstance(info, str) and not bad_ref:
            report.items.append(ImageItem(img, caption, source, info[0], info[1], tuple(refs)))

    if plan.summary.layout != "none":
        from flux2_lora.data.references import summarise

        sizes = {p: v for p, v in ref_info.items() if not isinstance(v, str)}
        summarise(plan, root, [i.path for i in report.items], sizes, reference_max_pixels)
        report.references = plan.summary

    exts = "/".join(IMAGE_EXTENSIONS)
    for cap in caption_files:
        if cap not in used_captions:
            report.num_unused_captions += 1
            problem(cap, f"caption file without an image (no {escape(cap.stem)}{exts} next to it)", "warning")
    report.problems.sort(key=lambda p: p.file)  # stable: keeps each file's messages in order
    return report


def _inside(path: Path, real_folder: Path) -> bool:
    real = Path(os.path.realpath(path))
    return real == real_folder or real_folder in real.parents


def _label(path: Path, root: Path) -> str:
    """A file's name in problems: relative to the dataset folder when inside it, else its full path."""
    try:
        return escape(path.relative_to(root).as_posix())
    except ValueError:
        return escape(path.as_posix())


def _check_references(
    refs: list[Path],
    real_folder: Path,
    root: Path,
    limits: tuple[int, int],
    seen: dict[Path, tuple[int, int] | str],
    report: DatasetReport,
) -> str | None:
    """The name of the first unusable reference of a target (its problem recorded once), or None.
    ``limits``: the largest image a file may decode to, and dataset.reference_max_pixels (the cap the
    reference is scaled down to as one of this target's references)."""
    from flux2_lora.data.references import size_problem

    max_image_pixels, reference_max_pixels = limits
    for ref in refs:
        if ref not in seen:
            info: tuple[int, int, bool] | str
            if not (ref.is_file() or ref.is_symlink()):
                info = "reference image not found"
            else:
                info = _refused(ref, real_folder) or _inspect_image(ref, max_image_pixels)
            if not isinstance(info, str):
                info = size_problem(info[0], info[1], len(refs), reference_max_pixels) or info
            seen[ref] = info if isinstance(info, str) else (info[0], info[1])
            if isinstance(info, str):
                report.problems.append(Problem(_label(ref, root), info, "error"))
        if isinstance(seen[ref], str):
            return _label(ref, root)
    return None


def require_usable(report: DatasetReport) -> None:
    """Raise :class:`DatasetError` when a scan left nothing to train on."""
    if report.items:
        return
    if report.num_images_found == 0:
        raise DatasetError(
            f"dataset.path: no images found in {escape(report.root)} (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    errors = report.errors
    shown = "; ".join(f"{p.file}: {p.message}" for p in errors[:5])
    more = f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
    raise DatasetError(f"dataset.path: no usable images in {escape(report.root)}; problems: {shown}{more}")
