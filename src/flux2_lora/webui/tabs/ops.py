"""Controls of other tabs for the operations of :mod:`flux2_lora.webui.ops`: Sample now / Save now beside
Stop in the Runs tab, and Caption images in the Train tab's dataset section. Each tab adds them with one
call where they sit and wires them with another, so its own module stays about its own tab."""

from __future__ import annotations

from typing import Any

import gradio as gr

from flux2_lora.webui import render
from flux2_lora.webui.ops import DEFAULT_CAPTION_MODEL, ask_state
from flux2_lora.webui.tabs import PRIVATE, Shared, skip
from flux2_lora.webui.widgets import Form

ASK_REASON = "Sample now / Save now: choose a running run"


# ---- Runs tab: sample now / save now -------------------------------------------------------------------
def add_ask() -> dict[str, Any]:
    """The two buttons and the reason they are disabled (inside the Stop / Resume row)."""
    return {
        "sample_now": gr.Button("Sample now", elem_id="sample-now-btn", interactive=False, scale=0),
        "save_now": gr.Button("Save now", elem_id="save-now-btn", interactive=False, scale=0),
        "ask_reason": gr.Markdown(ASK_REASON, elem_id="ask-reason"),
    }


def ask_outputs(c: dict[str, Any]) -> list[Any]:
    return [c["sample_now"], c["save_now"], c["ask_reason"]]


def ask_updates(c: dict[str, Any], snap: dict[str, Any]) -> dict[Any, Any]:
    """The buttons for the monitored run's status: enabled while its trainer trains."""
    ok, reason = ask_state(snap)
    return {
        c["sample_now"]: gr.update(interactive=ok),
        c["save_now"]: gr.update(interactive=ok),
        c["ask_reason"]: render.esc(reason),
    }


def wire_ask(shared: Shared, c: dict[str, Any]) -> None:
    for what, btn in (("sample", c["sample_now"]), ("save", c["save_now"])):

        def ask(rd: str, what: str = what) -> str:
            r = shared.actions.ask_run(rd or "", what)
            return ("✔ " if r["ok"] else "✘ ") + render.esc(r["message"])

        btn.click(ask, shared.run_dir, c["msg"], **PRIVATE)


# ---- Train tab: caption images ---------------------------------------------------------------------
MODES = {
    "Keep existing captions; caption the others": "keep",
    "Keep existing; new captions start with the trigger word": "prefix",
    "Overwrite every caption": "overwrite",
}


def add_caption() -> dict[str, Any]:
    """The Caption images fold of the dataset section."""
    c: dict[str, Any] = {}
    with gr.Accordion(
        "Caption images (a vision-language model writes the missing captions)",
        open=False,
        elem_id="caption-fold",
    ):
        c["cap_model"] = gr.Textbox(
            DEFAULT_CAPTION_MODEL,
            label="Captioning model (Hub id or folder)",
            max_lines=1,
            elem_id="caption-model",
        )
        c["cap_mode"] = gr.Radio(
            list(MODES.items()), value="keep", label="Existing captions", elem_id="caption-mode"
        )
        with gr.Row():
            c["cap_btn"] = gr.Button("Caption images", elem_id="caption-btn", interactive=False, scale=0)
            c["cap_reason"] = gr.Markdown("checking the captioning model…", elem_id="caption-reason")
        c["cap_progress"] = gr.HTML(caption_html({"state": "none"}), elem_id="caption-progress")
    c["cap_done"] = gr.State(0)  # moves when a captioning ends: the dataset check reads the folder again
    c["cap_timer"] = gr.Timer(1.0, active=False)
    return c


def caption_html(s: dict[str, Any]) -> str:
    """The captioning's state (data-state for tests), its progress bar line and its last output lines."""
    state = s.get("state") or "none"
    text = {"none": "", "running": "Captioning…", "done": "Captioning done.", "failed": "Captioning failed."}
    lines = [text.get(state, state)]
    if s.get("message"):
        lines.append(render.esc(s["message"]))
    if s.get("progress"):
        lines.append(f"<code>{render.esc(s['progress'])}</code>")
    out = f"<pre>{render.esc(s['output'])}</pre>" if s.get("output") else ""
    return f'<div id="caption-state" data-state="{render.esc(state)}">{"<br>".join(lines)}{out}</div>'


def _said(errors: list[dict[str, str]]) -> str:
    return "; ".join(
        f"{render.field_name(e['field'])}: {e['message']}" if e.get("field") else e["message"] for e in errors
    )


def wire_caption(shared: Shared, c: dict[str, Any], form: Form) -> None:
    acts = shared.actions

    def on_model(model: str) -> dict[Any, Any]:
        r = acts.caption_model(model or "")
        return {
            c["cap_btn"]: gr.update(interactive=r["ok"]),
            c["cap_reason"]: render.esc(
                r["message"] if r["ok"] else f"Caption images is disabled: {r['message']}"
            ),
        }

    gr.on(
        [c["cap_model"].change, shared.blocks.load],
        on_model,
        c["cap_model"],
        [c["cap_btn"], c["cap_reason"]],
        show_progress="hidden",
        **PRIVATE,
    )

    fields = [form["dataset.path"], form["dataset.trigger_word"], form["dataset.caption_extension"]]

    def on_start(data: dict[Any, Any]) -> dict[Any, Any]:
        path, trigger, ext = (data[f] for f in fields)
        r = acts.caption_start(
            str(path or ""),
            data[c["cap_model"]] or "",
            data[c["cap_mode"]] or "keep",
            str(trigger or ""),
            str(ext or ".txt"),
        )
        if not r["ok"]:
            return {c["cap_progress"]: caption_html({"state": "failed", "message": _said(r["errors"])})}
        return {
            c["cap_progress"]: caption_html({"state": "running", "message": r["message"]}),
            c["cap_timer"]: gr.Timer(active=True),
            c["cap_btn"]: gr.update(interactive=False),
        }

    c["cap_btn"].click(
        on_start,
        {*fields, c["cap_model"], c["cap_mode"]},
        [c["cap_progress"], c["cap_timer"], c["cap_btn"]],
        **PRIVATE,
    )

    def on_tick(data: dict[Any, Any]) -> dict[Any, Any]:
        s = acts.caption_status(str(data[form["dataset.path"]] or ""))
        if s["state"] == "running":
            return {c["cap_progress"]: caption_html(s), **skip([c["cap_timer"], c["cap_btn"], c["cap_done"]])}
        return {
            c["cap_progress"]: caption_html(s),
            c["cap_timer"]: gr.Timer(active=False),
            c["cap_btn"]: gr.update(interactive=True),
            c["cap_done"]: data[c["cap_done"]] + 1,
        }

    c["cap_timer"].tick(
        on_tick,
        {form["dataset.path"], c["cap_done"]},
        [c["cap_progress"], c["cap_timer"], c["cap_btn"], c["cap_done"]],
        show_progress="hidden",
        **PRIVATE,
    )
