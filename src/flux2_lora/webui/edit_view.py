"""Edit LoRAs in the UI: pictures of pairs (no Gradio, no torch; PIL only).

- the dataset check's pairs as thumbnails: the reference(s) → the target;
- an edit run's validation samples as reference(s) | sample;
- a reference image given to Test LoRA as an upload, copied into the uploads folder.

Every picture is made by this program in its own cache folder (``<runs>/generated/edit-pairs``), named by
what it shows (the source files' paths, sizes and modification times), so it is made once and the page is
served only files from the runs folder. A source image is read only where the UI may read (the allowed
folders, or the generated edit demo's own folder); anything else is left out of the picture.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flux2_lora.webui.paths import AppPaths, resolve_inside

PAIR_PREVIEWS = 6  # pairs shown by the dataset check
THUMB_HEIGHT = 128  # px of each image in a dataset thumbnail
SAMPLE_HEIGHT = 256  # px of each image in a gallery pair
PAIRS_FOLDER = "edit-pairs"
REFERENCE_UPLOADS = "references"  # the uploads folder's subfolder for Test LoRA's reference uploads
_GAP = 8
_ARROW = 28
_BACKGROUND = (255, 255, 255)
_ARROW_COLOR = (90, 90, 90)


def _demo_edit_folder() -> Path:
    from flux2_lora.data.demo_edit import demo_edit_dir

    return demo_edit_dir()


def readable_image(paths: AppPaths, path: str | Path) -> Path | None:
    """An image file this UI may read (allowed folders, the edit demo's folder), resolved; else None."""
    real = resolve_inside(str(path), [*paths.read_roots, _demo_edit_folder()])
    return real if real is not None and real.is_file() else None


def _key(kind: str, files: Sequence[Path]) -> str:
    h = hashlib.sha1(kind.encode())
    for f in files:
        st = f.stat()
        h.update(b"\0" + os.fsencode(str(f)) + f"\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _open(path: Path, height: int) -> Any:
    from PIL import Image, ImageOps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as raw:
            im = ImageOps.exif_transpose(raw).convert("RGB")
    width = max(1, round(im.width * height / max(1, im.height)))
    return im.resize((min(width, 8 * height), height))


def _compose(parts: list[Any], height: int, arrow_before_last: bool) -> Any:
    """The images side by side on white; an arrow (→) before the last one when ``arrow_before_last``."""
    from PIL import Image, ImageDraw

    arrow = _ARROW if arrow_before_last else 0
    width = sum(p.width for p in parts) + _GAP * (len(parts) - 1) + arrow
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    x = 0
    for i, p in enumerate(parts):
        if arrow and i == len(parts) - 1:
            draw = ImageDraw.Draw(canvas)
            mid, x0, x1 = height // 2, x + 4, x + arrow - 6
            draw.line((x0, mid, x1 - 6, mid), fill=_ARROW_COLOR, width=3)
            draw.polygon([(x1, mid), (x1 - 10, mid - 7), (x1 - 10, mid + 7)], fill=_ARROW_COLOR)
            x += arrow
        canvas.paste(p, (x, 0))
        x += p.width + _GAP
    return canvas


def pair_image(
    paths: AppPaths, references: Sequence[str | Path], result: str | Path, kind: str
) -> Path | None:
    """The picture of one pair: ``kind`` "dataset" (references → target, thumbnail size) or "sample"
    (references | sample). None when an image cannot be read or is outside what the UI may read."""
    files = [readable_image(paths, p) for p in [*references, result]]
    if not references or any(f is None for f in files):
        return None
    real = [f for f in files if f is not None]
    try:
        out = paths.generated / PAIRS_FOLDER / f"{kind}-{_key(kind, real)}.png"
        if out.is_file():
            return out
        height = THUMB_HEIGHT if kind == "dataset" else SAMPLE_HEIGHT
        image = _compose([_open(f, height) for f in real], height, arrow_before_last=kind == "dataset")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}")
        image.save(tmp, format="PNG")
        os.replace(tmp, out)  # complete or absent: a page polling meanwhile never shows half a file
        return out
    except Exception:  # PIL raises many types on a bad file; the dataset check names that file itself
        return None


def dataset_pairs(
    paths: AppPaths, root: Path, items: Sequence[Any], limit: int = PAIR_PREVIEWS
) -> list[dict[str, Any]]:
    """The first ``limit`` pairs of a dataset scan (its items with references) with their thumbnails."""
    out = []
    for item in items:
        if not item.references:
            continue
        thumb = pair_image(paths, item.references, item.path, "dataset")
        out.append(
            {
                "target": _rel(item.path, root),
                "references": [_rel(r, root) for r in item.references],
                "caption": item.caption,
                "thumbnail": str(thumb) if thumb else None,
            }
        )
        if len(out) >= limit:
            break
    return out


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # a reference folder outside the dataset folder
        return str(path)


def sample_references(run: Path, samples: list[dict[str, Any]]) -> list[list[str]]:
    """Each sample's reference images: what the trainer recorded in samples/index.jsonl, else the run
    config's validation.references for the sample's prompt ([] for a text-to-image sample)."""
    from flux2_lora import runs
    from flux2_lora.config.io import read_yaml

    given: list[list[str]] = []
    per_prompt = 1
    if any("references" not in s for s in samples):
        data, _ = read_yaml(run / runs.CONFIG_FILE)
        val = data.get("validation") if isinstance(data, dict) else None
        if isinstance(val, dict):
            refs = val.get("references")
            if isinstance(refs, list):
                given = [[str(p) for p in g] for g in refs if isinstance(g, list)]
            n = val.get("num_samples")
            per_prompt = n if isinstance(n, int) and n > 0 else 1
    out = []
    for s in samples:
        refs = s.get("references")
        if isinstance(refs, list):
            out.append([str(p) for p in refs])
            continue
        index = s.get("index")
        n = index // per_prompt if isinstance(index, int) and index >= 0 else -1
        out.append(given[n] if 0 <= n < len(given) else [])
    return out


def with_pairs(paths: AppPaths, run: Path, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The monitor's samples, an edit sample with ``pair``: its reference | sample picture."""
    out = []
    for s, refs in zip(samples, sample_references(run, samples)):
        pair = pair_image(paths, refs, s["file"], "sample") if refs else None
        out.append({**s, "references": refs, **({"pair": str(pair)} if pair else {})})
    return out


def gallery_items(samples: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(picture, caption) for the Runs tab's gallery: an edit sample as reference | sample."""
    return [
        (
            s.get("pair") or s["file"],
            f"step {s['step']}: {s['prompt']}{' (reference | sample)' if s.get('pair') else ''}",
        )
        for s in samples
    ]


def stored_reference(paths: AppPaths, upload: str) -> str:
    """An uploaded reference image (Gradio's temporary file) re-saved as PNG into the uploads folder, so
    generation reads it from a folder the UI may read; ValueError when it is not an image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    folder = paths.uploads / REFERENCE_UPLOADS
    folder.mkdir(parents=True, exist_ok=True)
    try:
        digest = hashlib.sha1(Path(upload).read_bytes()).hexdigest()[:20]
    except OSError:
        raise ValueError("the uploaded reference image is gone; upload it again") from None
    out = folder / f"{digest}.png"  # the same upload twice is stored once
    if out.is_file():
        return str(out)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(upload) as raw:
                ImageOps.exif_transpose(raw).convert("RGB").save(out, format="PNG")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        out.unlink(missing_ok=True)
        raise ValueError(f"the reference image cannot be read ({type(e).__name__})") from None
    return str(out)


def pairs_markdown(check: dict[str, Any]) -> str:
    """The dataset check's pair counts as the dataset panel shows them above the thumbnails ("" for a
    text-to-image dataset)."""
    from flux2_lora.webui.render import esc

    refs = (check.get("report") or {}).get("references")
    if not refs:
        return ""
    per = refs.get("references_per_target") or {}
    counts = ", ".join(f"{n} × {k}" for k, n in per.items()) or "none"
    orphans = refs.get("orphan_references") or []
    without = refs.get("targets_without_references") or []
    where = f"folder `{esc(refs['folder'])}`" if refs.get("layout") == "folder" else "metadata.jsonl"
    lines = [
        f"**Edit pairs** ({where}): **{refs.get('pairs', 0)}** pairs · targets without references: "
        f"{len(without)} · orphan references: {len(orphans)} · per target: {counts} (targets × references) "
        f"· up to {refs.get('max_reference_tokens', 0)} reference tokens per sample",
    ]
    for label, names in (("without references", without), ("orphan references", orphans)):
        if names:
            shown = ", ".join(f"`{esc(n)}`" for n in names[:5])
            more = f" and {len(names) - 5} more" if len(names) > 5 else ""
            lines.append(f"- {label}: {shown}{more}")
    if check.get("pairs"):
        lines.append(
            f"\nThe first {len(check['pairs'])} pairs (reference → target, the caption is the instruction):"
        )
    return "\n".join(lines)


def pairs_gallery(check: dict[str, Any]) -> list[tuple[str, str]]:
    """(thumbnail, instruction) of the dataset check's pairs that have a thumbnail."""
    return [(p["thumbnail"], p["caption"]) for p in check.get("pairs") or [] if p.get("thumbnail")]


def references_of(paths: AppPaths, upload: str | None, typed: str | None) -> list[str]:
    """Test LoRA's reference images: an upload (stored in the uploads folder), else the typed paths (one
    a line; generate checks each is inside the allowed folders). ValueError for an unreadable upload."""
    if upload:
        return [stored_reference(paths, upload)]
    return [line.strip() for line in (typed or "").splitlines() if line.strip()]
