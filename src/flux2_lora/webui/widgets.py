"""Gradio widgets built from :mod:`flux2_lora.webui.schema` (one per config field), plus renderers."""

from __future__ import annotations

import hashlib
import html
import json
from typing import Any

import gradio as gr

from flux2_lora.webui.schema import FieldSpec

VERDICT_TEXT = {"fits": "fits", "tight": "tight", "does_not_fit": "does not fit"}


def _info(spec: FieldSpec) -> str:
    bounds = spec.bounds_text()
    text = spec.help + (f" ({bounds})" if bounds and spec.kind in ("int", "float") else "")
    return text


def make_widget(spec: FieldSpec, value: Any) -> gr.components.Component:
    """The widget for one field: Literal → dropdown, bool → checkbox, bounded number → slider, …"""
    common: dict[str, Any] = {
        "label": f"{spec.label}",
        "info": _info(spec),
        "elem_id": f"field-{spec.section}-{spec.key}",
        "interactive": not spec.disabled,
    }
    if spec.kind == "bool":
        return gr.Checkbox(value=value, **common)
    if spec.kind == "choice":
        choices = [str(c) if spec.extra.get("int_choices") else c for c in spec.choices]
        return gr.Dropdown(
            choices=choices, value=value, allow_custom_value=spec.custom, filterable=spec.custom, **common
        )
    if spec.kind == "lines":
        hint = ", ".join(map(str, spec.choices))
        return gr.Textbox(value=value, lines=3, max_lines=12, placeholder=hint or "one per line", **common)
    if spec.kind in ("int", "float"):
        if spec.slider:
            lo = spec.ui_min if spec.ui_min is not None else spec.minimum
            hi = spec.ui_max if spec.ui_max is not None else spec.maximum
            step = spec.step or (1 if spec.kind == "int" else 0.01)
            return gr.Slider(minimum=lo, maximum=hi, step=step, value=value, **common)
        # Bounds are checked by validate_dict, which names the field; Gradio's own check would only toast.
        return gr.Number(value=value, precision=0 if spec.kind == "int" else None, **common)
    return gr.Textbox(value=value, lines=1, max_lines=1, **common)


def digest(config: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]


def errors_markdown(errors: list[dict[str, str]], labels: dict[str, str]) -> str:
    if not errors:
        return ""
    lines = ["**Fix these fields:**"]
    for e in errors:
        name = (
            f"`{e['field']}` ({labels[e['field']]})"
            if e["field"] in labels
            else f"`{e['field'] or 'config'}`"
        )
        lines.append(f"- ❌ {name}: {e['message']}")
    return "\n".join(lines)


def verdict_html(result: dict[str, Any], rev: str) -> str:
    """The estimate panel head: verdict colour on the chosen GPU; data-rev lets tests see each update."""
    if not result.get("available"):
        msg = html.escape(result.get("message", "estimate unavailable"))
        cls = "error" if result.get("errors") else "unavailable"
        return f'<div id="estimate-verdict" class="verdict {cls}" data-rev="{rev}">{msg}</div>'
    r = result["report"]
    gpu = r.get("gpu") or {}
    verdict = gpu.get("verdict", "unknown")
    head = (
        f"{html.escape(str(gpu.get('name', 'GPU')))}: {VERDICT_TEXT.get(verdict, verdict)} — "
        f"{r.get('total_gib', 0):.1f} GiB of {gpu.get('gib', 0):g} GiB"
    )
    sub = f"peak allocated {r.get('allocated_peak_gib', 0):.1f} GiB · trainable {r.get('trainable_params', 0):,}"
    host = r.get("host")
    if host:
        sub += (
            f" · host RAM peak {host.get('peak_gib', 0):.1f} GiB of {host.get('available_gib') or 0:.1f} GiB"
            f" available ({VERDICT_TEXT.get(host.get('verdict'), '?')})"
        )
    return (
        f'<div id="estimate-verdict" class="verdict {verdict}" data-rev="{rev}">'
        f'<div class="verdict-head">{head}</div><div class="verdict-sub">{sub}</div></div>'
    )


def breakdown_markdown(result: dict[str, Any]) -> str:
    if not result.get("available"):
        return ""
    r = result["report"]
    lines = ["| component | GiB |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in (r.get("components") or {}).items()]
    phases = r.get("phases") or {}
    if phases:
        lines += ["", "| phase | GiB |", "|---|---:|"] + [f"| {k} | {v:.2f} |" for k, v in phases.items()]
    host = r.get("host") or {}
    if host.get("phases"):
        lines += ["", "| host RAM phase | GiB |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in host["phases"].items()]
    gpus = r.get("gpus") or []
    if gpus:
        lines += ["", "| GPU | GiB | verdict |", "|---|---:|---|"]
        lines += [
            f"| {g['name']} | {g['gib']:g} | {VERDICT_TEXT.get(g['verdict'], g['verdict'])} |" for g in gpus
        ]
    return "\n".join(lines)


def recommendation_label(rec: dict[str, Any]) -> str:
    fits = " → fits" if rec.get("fits_after") else ""
    return f"Apply: {rec.get('title', '?')} (−{rec.get('saves_gib', 0):.1f} GiB{fits})"


def status_markdown(snap: dict[str, Any]) -> str:
    """Run status as HTML; data-state/data-step let tests and scripts read it."""
    if not snap.get("ok", True) or snap.get("state") == "none":
        return '<div id="run-status-text" data-state="none">No run yet. Start one, or pick a past run below.</div>'
    step, total = snap.get("step") or 0, snap.get("total_steps") or 0
    pct = f" ({100 * step / total:.0f}%)" if total else ""
    eta = snap.get("eta_seconds")
    parts = [f"<b>{html.escape(snap['state'])}</b> · step {step}/{total}{pct}"]
    if eta is not None and not snap.get("final"):
        parts.append(f"ETA {_duration(eta)}")
    if snap.get("seconds_per_step"):
        parts.append(f"{snap['seconds_per_step']:.2f} s/step")
    lines = [" · ".join(parts)]
    if snap.get("message"):
        lines.append(html.escape(snap["message"]))
    if snap.get("error"):
        lines.append("❌ " + html.escape(snap["error"]))
    if total:
        lines.append(f'<progress max="{total}" value="{step}" style="width:100%"></progress>')
    body = "<br>".join(lines)
    return (
        f'<div id="run-status-text" data-state="{html.escape(snap["state"])}" data-step="{step}">{body}</div>'
    )


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


CSS = """
.verdict { padding: 10px 14px; border-radius: 8px; font-weight: 600; color: #111; }
.verdict.fits { background: #bbf7d0; border: 1px solid #16a34a; }
.verdict.tight { background: #fde68a; border: 1px solid #d97706; }
.verdict.does_not_fit { background: #fecaca; border: 1px solid #dc2626; }
.verdict.unavailable { background: #e5e7eb; border: 1px solid #9ca3af; font-weight: 400; }
.verdict.error { background: #fecaca; border: 1px solid #dc2626; font-weight: 400; }
.verdict-sub { font-weight: 400; font-size: 0.9em; margin-top: 4px; }
#form-errors { border-left: 4px solid #dc2626; padding-left: 8px; }
.section-errors { color: #b91c1c; }
"""
