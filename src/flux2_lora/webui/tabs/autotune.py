"""The Train tab's "Auto-tune" button: the form's dataset read, a config proposed (each value with its
reason) and fitted to the chosen GPU, applied to the form, the reasons shown under the button."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from flux2_lora.webui import render
from flux2_lora.webui.tabs import PRIVATE, Shared
from flux2_lora.webui.widgets import Form

if TYPE_CHECKING:
    from flux2_lora.webui.direct import PageCalls


def add_autotune() -> dict[str, Any]:
    """The button and the reasons panel (call where they should appear, inside the Blocks)."""
    return {
        "autotune": gr.Button("Auto-tune from the dataset", size="sm", elem_id="autotune-btn"),
        "autotune_reasons": gr.Markdown(elem_id="autotune-reasons"),
    }


def reasons_markdown(r: dict[str, Any]) -> str:
    if not r.get("ok"):
        return f"✘ **{render.esc(r.get('field') or 'dataset')}**: {render.esc(r.get('message', ''))}"
    lines = [
        f"**Auto-tuned: a {render.esc(r['kind'])} LoRA** (applied to the form)",
        "",
        "| field | value | why |",
        "|---|---|---|",
    ]
    for ch in r["choices"]:
        lines.append(f"| {_cell(ch['field'] or 'kind')} | {_cell(ch['value'])} | {_cell(ch['reason'])} |")
    fit = r.get("fit") or {}
    if fit.get("note"):
        lines += ["", f"GPU {render.esc(fit.get('gpu') or '')}: {render.esc(fit['note'])}"]
    return "\n".join(lines)


def _cell(v: Any) -> str:
    return render.esc(v).replace("|", "\\|").replace("\n", " ")


def wire_autotune(shared: Shared, c: dict[str, Any], form: Form, alpha_linked: Any, calls: PageCalls) -> None:
    acts = shared.actions

    def on_click(data: dict[Any, Any]) -> dict[Any, Any]:
        r = acts.autotune(form.config(data), data[c["gpu"]] or "")
        out: dict[Any, Any] = {c["autotune_reasons"]: reasons_markdown(r)}
        if r.get("ok"):
            out.update(form.updates(r["config"]))
            lora = r["config"].get("lora") or {}
            out[alpha_linked] = lora.get("alpha") == lora.get("rank")
        return out

    # A page call (webui/direct.py) shows no progress of its own: the reasons box says it is working.
    c["autotune"].click(None, None, c["autotune_reasons"], js="() => 'Auto-tuning…'", **PRIVATE)
    calls.form_event(
        c["autotune"].click,
        on_click,
        form.components,
        [c["gpu"]],
        [*form.components, c["autotune_reasons"], alpha_linked],
        "autotune",
        message=c["autotune_reasons"],
    )
