"""Gradio widgets built from :mod:`flux2_lora.webui.schema`, one per config field, found by field path.

Numbers are plain number boxes with no range of their own: the schema's bounds are checked by the same
validation the CLI uses, and a refused value shows its message at the widget (:data:`PAGE_JS`), so what
the widget displays is what runs.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from flux2_lora.webui.schema import FieldSpec, config_from_values, form_fields, values_from_config


def info_text(spec: FieldSpec) -> str:
    bounds = spec.bounds_text()
    return spec.help + (f" ({bounds})" if bounds and spec.kind in ("int", "float") else "")


def make_widget(spec: FieldSpec, value: Any, elem_id: str | None = None) -> Any:
    """The widget for one field: Literal → dropdown, bool → checkbox, number → number box, list → lines."""
    common: dict[str, Any] = {
        "label": spec.label,
        "info": info_text(spec),
        "elem_id": elem_id or f"field-{spec.section}-{spec.key}",
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
        return gr.Textbox(value=value, lines=2, max_lines=12, placeholder=hint or "one per line", **common)
    if spec.extra.get("slider"):
        lo, hi = spec.ui_min or 0, spec.ui_max if spec.ui_max is not None else spec.maximum or 0
        return gr.Slider(minimum=lo, maximum=hi, step=spec.step or 1, value=value, **common)
    if spec.kind in ("int", "float"):
        # The arrows step by the schema's hint (1e-6 for the learning rate, never +1 on 1e-4).
        step = spec.step or (spec.ui_min if spec.log and spec.ui_min else (1 if spec.kind == "int" else 0.01))
        return gr.Number(value=value, precision=0 if spec.kind == "int" else None, step=step, **common)
    return gr.Textbox(
        value=value, lines=spec.lines, max_lines=1 if spec.lines == 1 else 4 * spec.lines, **common
    )


class Form:
    """The config widgets by field path. Events take ``form.inputs`` (a set: Gradio passes one dict of
    component → value) and return ``form.updates(config)`` (a dict of component → value)."""

    def __init__(self) -> None:
        self.widgets: dict[str, Any] = {}  # Any: Gradio's Component type has no event attributes
        self.specs: dict[str, FieldSpec] = {s.path: s for s in form_fields()}

    def add(self, spec: FieldSpec, value: Any) -> Any:
        w = make_widget(spec, value)
        self.widgets[spec.path] = w
        return w

    def __getitem__(self, path: str) -> Any:
        return self.widgets[path]

    def in_section(self, *sections: str) -> list[Any]:
        return [w for p, w in self.widgets.items() if p.split(".")[0] in sections]

    @property
    def components(self) -> list[Any]:
        return list(self.widgets.values())

    @property
    def inputs(self) -> set[gr.components.Component]:
        return set(self.widgets.values())

    def config(self, data: dict[Any, Any]) -> dict[str, dict[str, Any]]:
        """The config in an event's input dict (fields that are not inputs of the event are left out)."""
        return config_from_values({p: data[w] for p, w in self.widgets.items() if w in data})

    def updates(self, config: dict[str, Any]) -> dict[gr.components.Component, Any]:
        values = values_from_config(config)
        return {w: values[p] for p, w in self.widgets.items()}


# Field errors are shown at their widgets by the page itself: the estimate panel carries them as JSON
# (data-errors) and an observer marks the widgets whenever it changes. Sending the ~70 widgets as outputs
# of every estimate instead would cost each refresh ~40 ms of rendering.
PAGE_JS = """
() => {
  window.flux2ShowFieldErrors = () => {
    const v = document.querySelector('#estimate-verdict');
    let errs = {};
    try { errs = JSON.parse((v && v.dataset.errors) || '{}'); } catch (e) {}
    document.querySelectorAll('.field-error-msg').forEach(e => e.remove());
    document.querySelectorAll('.field-invalid').forEach(e => e.classList.remove('field-invalid'));
    for (const [path, msg] of Object.entries(errs)) {
      const el = document.getElementById('field-' + path.replace('.', '-'));
      if (!el) continue;
      el.classList.add('field-invalid');
      const d = document.createElement('div');
      d.className = 'field-error-msg';
      d.textContent = '\u2718 ' + msg;
      el.appendChild(d);
    }
  };
  const watch = () => {
    const panel = document.querySelector('#estimate-panel');
    if (!panel) { setTimeout(watch, 100); return; }
    new MutationObserver(() => window.flux2ShowFieldErrors()).observe(
      panel, {subtree: true, childList: true, attributes: true, attributeFilter: ['data-errors']});
    window.flux2ShowFieldErrors();
  };
  watch();
}
"""
SHOW_FIELD_ERRORS_SOON = (
    "() => { setTimeout(() => window.flux2ShowFieldErrors && window.flux2ShowFieldErrors(), 50); }"
)


CSS = """
/* The estimate panel stays in view while the form scrolls (sticky needs no clipping ancestor). */
.gradio-container { overflow-x: clip !important; overflow-y: visible !important; }
#side-panel { position: sticky; top: 8px; align-self: flex-start; max-height: calc(100vh - 16px);
  overflow-y: auto; overscroll-behavior: contain; }
/* A column with a height limit wraps what does not fit into a second column past the panel's right edge
   (Gradio's columns are flex-wrap: wrap): it scrolls instead, every block at its full height. */
#side-panel { flex-wrap: nowrap !important; }
#side-panel > * { flex-shrink: 0 !important; }
/* The log keeps its newest line in view (a column-reverse scroller starts at its end). */
#log-tail { max-height: 12em !important; overflow-y: auto !important; display: flex !important;
  flex-direction: column-reverse !important; }
#log-tail .log-text { margin: 0; white-space: pre-wrap; font-size: 0.82em; }
.verdict { padding: 10px 14px; border-radius: 8px; font-weight: 600; color: #111; }
.verdict.fits { background: #bbf7d0; border: 1px solid #16a34a; }
.verdict.tight { background: #fde68a; border: 1px solid #d97706; }
.verdict.does_not_fit { background: #fecaca; border: 1px solid #dc2626; }
.verdict.unavailable, .verdict.unknown { background: #e5e7eb; border: 1px solid #9ca3af; font-weight: 400; }
.verdict.error { background: #fecaca; border: 1px solid #dc2626; font-weight: 400; }
.verdict-sub { font-weight: 400; font-size: 0.9em; margin-top: 4px; }
#estimate-warnings ul { margin: 4px 0 0 18px; }
#estimate-warnings li { margin-bottom: 4px; }
.warning-fix { color: #92400e; font-size: 0.9em; }
#form-errors { border-left: 4px solid #dc2626; padding-left: 8px; }
.field-invalid input, .field-invalid textarea { border-color: #dc2626 !important; }
.field-error-msg { color: #b91c1c; font-size: 0.9em; margin-top: 4px; }
#start-reason { color: #b91c1c; }
/* Small demo images are shown enlarged with their pixels, not blurred; thumbnails keep a sane size. */
#samples img, #test-image img { image-rendering: pixelated; }
#samples .grid-container { grid-template-columns: repeat(auto-fill, minmax(150px, 200px)) !important; }
#test-image img { min-width: 384px; object-fit: contain; }
/* Auto-tune's reasons: a value or field name never breaks mid-word ("valu e"); the reason wraps. */
#autotune-reasons table { table-layout: auto; width: 100%; }
#autotune-reasons td, #autotune-reasons th { word-break: normal !important; overflow-wrap: normal !important; }
#autotune-reasons td:nth-child(-n+2), #autotune-reasons th:nth-child(-n+2) { white-space: nowrap; }
#preflight-result table { margin-top: 6px; }
#preflight-result td, #preflight-result th { padding: 2px 10px; }
"""
