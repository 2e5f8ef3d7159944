"""Checks the form runs as the user types: model path, dataset, templates (pure: no gradio, no torch)."""

from __future__ import annotations

import hashlib
import html
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..config import TrainConfig
from ..config_io import ConfigIssue, diff_from_defaults, read_yaml
from ..data.archive import prepare_dataset_source
from ..data.scan import DatasetError, scan_dataset
from ..demo_paths import ensure_demo_dataset, is_demo
from ..variants import get_variant, read_local_transformer_config, resolve_model
from .runner import UIError

TEMPLATE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_PROBLEMS_SHOWN = 30


def _esc(text: Any) -> str:
    return html.escape(str(text))


# ----------------------------------------------------------------------------------------- model


def _params(variant_arch: Any) -> int | None:
    try:  # the memory model owns the exact count; without it the check still names the variant
        from ..memory.estimate import transformer_params
    except ImportError:
        return None
    linear, other = transformer_params(variant_arch)
    return int(linear + other)


def _weights_on_disk(path: Path) -> int:
    folder = path / "transformer" if (path / "transformer").is_dir() else path
    return sum(f.stat().st_size for f in folder.glob("*.safetensors") if f.is_file())


def check_model(path: str, variant: str = "auto") -> dict[str, Any]:
    """What ``model.path`` resolves to without loading anything: variant, size, where it comes from."""
    path = (path or "").strip()
    if not path:
        return {"ok": False, "message": "model.path: give a hub id, a local diffusers folder, or 'demo'"}
    try:
        resolved = resolve_model(path, variant or "auto")
    except ValueError as e:
        return {"ok": False, "message": str(e)}
    v = get_variant(resolved.variant)
    params = _params(resolved.arch)
    out: dict[str, Any] = {
        "ok": True,
        "variant": resolved.variant,
        "title": v.title,
        "source": resolved.source,
        "transformer_params": params,
        "text_encoder_params": v.text_encoder.params,
    }
    local = Path(path).expanduser()
    if resolved.source == "local":
        out["weights_bytes"] = _weights_on_disk(local)
    elif resolved.source != "demo" and local.exists() and read_local_transformer_config(local) is None:
        out["warning"] = f"{local} exists but has no transformer/config.json; it will be read as a hub id"
    return out


def model_markdown(info: Mapping[str, Any]) -> str:
    if not info.get("ok"):
        return f"❌ {info.get('message', 'invalid model')}"
    where = {
        "demo": "embedded demo, built locally",
        "local": "local folder (its config.json decides the shape)",
        "hub-name": "recognised from the hub id; downloaded on first use",
        "given": "as set in model.variant",
    }[info["source"]]
    parts = [f"✅ **{info['title']}** — {where}"]
    if info.get("transformer_params"):
        parts.append(f"transformer {info['transformer_params'] / 1e9:.2f} B parameters")
    parts.append(f"text encoder {info['text_encoder_params'] / 1e9:.2f} B")
    if info.get("weights_bytes"):
        parts.append(f"{info['weights_bytes'] / 2**30:.1f} GiB of weights on disk")
    text = " · ".join(parts)
    if info.get("warning"):
        text += f"\n\n⚠️ {info['warning']}"
    return text


# ----------------------------------------------------------------------------------------- dataset


def save_upload(tmp_path: str | Path, uploads_dir: Path) -> Path:
    """Keep an uploaded .zip under the uploads folder (named by content) after checking it like the CLI."""
    src = Path(tmp_path)
    if src.suffix.lower() != ".zip":
        raise UIError("upload a .zip of images and caption files", "dataset.path")
    h = hashlib.sha256()
    with src.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = h.hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", src.stem)[:48] or "dataset"
    dest = uploads_dir / f"{stem}-{digest}.zip"
    uploads_dir.mkdir(parents=True, exist_ok=True)
    if not dest.is_file():
        shutil.copyfile(src, dest)
    try:  # the same safe extraction the trainer uses: traversal, links, sizes, zip bombs
        prepare_dataset_source(dest, uploads_dir / f"{stem}-{digest}")
    except DatasetError as e:
        dest.unlink(missing_ok=True)
        raise UIError(str(e).replace(str(dest), src.name), "dataset.path") from None
    return dest


def check_dataset(
    path: str,
    *,
    work_root: Path,
    caption_extension: str = ".txt",
    default_caption: str = "",
    resolution: int | None = None,
    trigger_word: str = "",
) -> dict[str, Any]:
    """Counts and problems of a dataset folder, .zip or 'demo', like ``flux2-lora dataset check``."""
    from ..captions import trigger_findings

    path = (path or "").strip()
    if not path:
        return {"ok": False, "error": "dataset.path: give a folder, a .zip, or 'demo'"}
    try:
        if is_demo(path):
            root = ensure_demo_dataset()
        else:
            key = hashlib.sha256(str(Path(path).expanduser().resolve()).encode()).hexdigest()[:16]
            root = prepare_dataset_source(Path(path), work_root / f"check-{key}")
        report = scan_dataset(
            root,
            caption_extension=caption_extension or ".txt",
            default_caption=default_caption or "",
            resolution=resolution,
        )
    except DatasetError as e:
        return {"ok": False, "error": str(e)}
    except OSError as e:
        return {"ok": False, "error": f"dataset.path: cannot read {path}: {e.strerror or e}"}
    out = report.to_dict()
    findings = trigger_findings(
        [(i.path.relative_to(root).as_posix(), i.caption) for i in report.items], trigger_word or ""
    )
    out["trigger"] = [{"file": f, "severity": s, "message": m} for f, s, m in findings]
    out["ok"] = bool(report.items)
    if not report.items:
        out["error"] = (
            f"no usable images in {path}" if report.num_images_found else f"no images found in {path}"
        )
    return out


def dataset_html(info: Mapping[str, Any]) -> str:
    if "num_items" not in info:
        return f'<div class="ds-check ds-bad">❌ {_esc(info.get("error", "no dataset"))}</div>'
    cls = "ds-ok" if info.get("ok") else "ds-bad"
    head = (
        f"{'✅' if info.get('ok') else '❌'} <b>{info['num_items']}</b> usable of "
        f"{info['num_images_found']} images · {info['num_captions']} caption files · "
        f"{info['num_missing_captions']} missing captions · {info['num_errors']} errors · "
        f"{info['num_warnings']} warnings"
    )
    rows = []
    for file, problems in info.get("problems", {}).items():
        for p in problems:
            rows.append((p["severity"], file, p["message"]))
    rows += [(t["severity"], t["file"] or "(all)", t["message"]) for t in info.get("trigger", [])]
    body = "".join(
        f'<li class="sev-{_esc(s)}"><b>{_esc(s)}</b> <code>{_esc(f)}</code>: {_esc(m)}</li>'
        for s, f, m in rows[:MAX_PROBLEMS_SHOWN]
    )
    more = f"<li>… and {len(rows) - MAX_PROBLEMS_SHOWN} more</li>" if len(rows) > MAX_PROBLEMS_SHOWN else ""
    err = f"<div>{_esc(info['error'])}</div>" if info.get("error") else ""
    listing = f"<ul>{body}{more}</ul>" if rows else "<div>No problems found.</div>"
    return f'<div class="ds-check {cls}"><div>{head}</div>{err}{listing}</div>'


# ----------------------------------------------------------------------------------------- templates


def template_path(name: str, templates_dir: Path) -> Path:
    name = (name or "").strip().removesuffix(".yaml")
    if not TEMPLATE_RE.match(name):
        raise UIError("template names use letters, digits, '.', '_' and '-' (at most 64)")
    return templates_dir / f"{name}.yaml"


def save_template(name: str, config: TrainConfig, templates_dir: Path) -> Path:
    """The config's differences from the defaults, as YAML the CLI reads (``flux2-lora train FILE``)."""
    path = template_path(name, templates_dir)
    templates_dir.mkdir(parents=True, exist_ok=True)
    text = f"# flux2-lora configuration template '{path.stem}' (saved from the web UI)\n"
    text += yaml.safe_dump(diff_from_defaults(config), sort_keys=False, allow_unicode=True, width=100)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def list_templates(templates_dir: Path) -> list[str]:
    if not templates_dir.is_dir():
        return []
    return sorted(p.stem for p in templates_dir.glob("*.yaml") if TEMPLATE_RE.match(p.stem))


def read_template(path: str | Path) -> tuple[dict[str, Any] | None, list[ConfigIssue]]:
    data, issues = read_yaml(path)
    if issues:
        return None, issues
    if not isinstance(data, dict):
        return None, [ConfigIssue("", f"{Path(path).name}: the top level must be a mapping of sections")]
    return data, []
