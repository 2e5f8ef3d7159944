"""Controls of other tabs for the operations of :mod:`flux2_lora.webui.ops`: Sample now / Save now beside
Stop in the Runs tab, and Caption images in the Train tab's dataset section, with its previews to edit
(:mod:`flux2_lora.webui.caption_preview`). Each tab adds them with one
call where they sit and wires them with another, so its own module stays about its own tab."""

from __future__ import annotations

from typing import Any

import gradio as gr

from flux2_lora.webui import render
from flux2_lora.webui.caption_preview import PAGE_SIZE
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
        c.update(_add_preview())
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

    _wire_preview(shared, c, fields)

    c["cap_timer"].tick(
        on_tick,
        {form["dataset.path"], c["cap_done"]},
        [c["cap_progress"], c["cap_timer"], c["cap_btn"], c["cap_done"]],
        show_progress="hidden",
        **PRIVATE,
    )


# ---- Train tab: caption previews to edit -----------------------------------------------------------
COLUMNS = 4


def _add_preview() -> dict[str, Any]:
    """A page of the dataset's images, each with its caption in a text box, and Save."""
    c: dict[str, Any] = {"thumbs": [], "boxes": []}
    with gr.Row():
        c["pv_show"] = gr.Button("Show captions to edit", elem_id="caption-preview-btn", scale=0)
        c["pv_back"] = gr.Button("◀ Previous", elem_id="caption-page-back", scale=0, interactive=False)
        c["pv_next"] = gr.Button("Next ▶", elem_id="caption-page-next", scale=0, interactive=False)
        c["pv_page"] = gr.Markdown("", elem_id="caption-page")
    for start in range(0, PAGE_SIZE, COLUMNS):
        with gr.Row():
            for i in range(start, start + COLUMNS):
                with gr.Column(min_width=160):
                    c["thumbs"].append(
                        gr.Image(
                            None,
                            type="filepath",
                            show_label=False,
                            interactive=False,
                            height=160,
                            buttons=[],
                            visible=False,
                            elem_id=f"caption-thumb-{i}",
                        )
                    )
                    c["boxes"].append(
                        gr.Textbox("", lines=3, max_lines=8, visible=False, elem_id=f"caption-edit-{i}")
                    )
    with gr.Row():
        c["pv_save"] = gr.Button("Save captions", elem_id="caption-save-btn", interactive=False, scale=0)
        c["pv_msg"] = gr.Markdown(
            "Save overwrites the caption files of the edited images (no backup is kept).",
            elem_id="caption-save-msg",
        )
    c["pv_shown"] = gr.State({})  # {dataset, page, pages, items: [[image, caption as read]]}
    c["pv_edits"] = gr.State({})  # {image: edited caption}, kept across pages until saved
    return c


def _stash(shown: dict[str, Any], edits: dict[str, str], boxes: list[str]) -> dict[str, str]:
    """The edits with those of the page shown (a box that differs from its caption as read)."""
    out = dict(edits or {})
    for (image, original), text in zip(shown.get("items") or [], boxes, strict=False):
        if text != original:
            out[image] = text
        else:
            out.pop(image, None)
    return out


def _wire_preview(shared: Shared, c: dict[str, Any], fields: list[Any]) -> None:
    acts = shared.actions
    thumbs, boxes = c["thumbs"], c["boxes"]
    outs = [
        *thumbs,
        *boxes,
        c["pv_page"],
        c["pv_back"],
        c["pv_next"],
        c["pv_save"],
        c["pv_shown"],
        c["pv_edits"],
    ]
    ins = {*fields, *boxes, c["pv_shown"], c["pv_edits"]}

    def show(
        data: dict[Any, Any], page: int, edits: dict[str, str], said: str | None = None
    ) -> dict[Any, Any]:
        path, ext = str(data[fields[0]] or ""), str(data[fields[2]] or ".txt")
        r = acts.caption_preview(path, ext, page)
        if not r["ok"]:
            out = {t: gr.update(visible=False, value=None) for t in thumbs}
            out.update({b: gr.update(visible=False, value="") for b in boxes})
            msg = "✘ " + render.esc(_said(r["errors"]))
            return {
                **out,
                c["pv_page"]: msg,
                c["pv_back"]: gr.update(interactive=False),
                c["pv_next"]: gr.update(interactive=False),
                c["pv_save"]: gr.update(interactive=False),
                c["pv_shown"]: {},
                c["pv_edits"]: {},
            }
        if r["dataset"] != (data[c["pv_shown"]] or {}).get("dataset"):
            edits = {}  # another folder: the edits were of the one shown before
        items = r["items"]
        out = {}
        for i, (t, b) in enumerate(zip(thumbs, boxes, strict=True)):
            if i >= len(items):
                out[t], out[b] = gr.update(visible=False, value=None), gr.update(visible=False, value="")
                continue
            it = items[i]
            label = it["image"] + (f" — ⚠ {it['error']}" if it["error"] else "")
            out[t] = gr.update(visible=True, value=it["thumb"])
            out[b] = gr.update(visible=True, value=edits.get(it["image"], it["caption"]), label=label)
        line = f"Page {r['page'] + 1} of {r['pages']} · {r['total']} images"
        line += "".join(f"<br>⚠ {render.esc(p)}" for p in r["problems"])
        out.update(
            {
                c["pv_page"]: line,
                c["pv_back"]: gr.update(interactive=r["page"] > 0),
                c["pv_next"]: gr.update(interactive=r["page"] + 1 < r["pages"]),
                c["pv_save"]: gr.update(interactive=bool(items)),
                c["pv_shown"]: {
                    "dataset": r["dataset"],
                    "page": r["page"],
                    "items": [[it["image"], it["caption"]] for it in items],
                },
                c["pv_edits"]: edits,
            }
        )
        return out

    def turn(step: int) -> Any:
        def on_turn(data: dict[Any, Any]) -> dict[Any, Any]:
            shown = data[c["pv_shown"]] or {}
            edits = _stash(shown, data[c["pv_edits"]], [data[b] for b in boxes])
            return show(data, int(shown.get("page", 0)) + step, edits)

        return on_turn

    c["pv_show"].click(turn(0), ins, outs, **PRIVATE)
    c["pv_back"].click(turn(-1), ins, outs, **PRIVATE)
    c["pv_next"].click(turn(1), ins, outs, **PRIVATE)

    def on_save(data: dict[Any, Any]) -> dict[Any, Any]:
        shown = data[c["pv_shown"]] or {}
        edits = _stash(shown, data[c["pv_edits"]], [data[b] for b in boxes])
        if not edits:
            return {**skip(outs), c["pv_msg"]: "Nothing to save: no caption was edited."}
        r = acts.caption_save(str(data[fields[0]] or ""), str(data[fields[2]] or ".txt"), edits)
        if not r["ok"]:  # the edits stay in their boxes, to be corrected
            return {**skip(outs), c["pv_msg"]: "✘ " + render.esc(_said(r["errors"]))}
        said = f"✔ saved {len(r['written'])} caption file(s): {', '.join(r['written']) or 'none changed'}"
        return {**show(data, int(shown.get("page", 0)), {}), c["pv_msg"]: render.esc(said)}

    c["pv_save"].click(on_save, ins, [*outs, c["pv_msg"]], **PRIVATE)

    def on_captioned(data: dict[Any, Any]) -> dict[Any, Any]:
        shown = data[c["pv_shown"]] or {}
        if not shown:  # the previews were never opened
            return skip(outs)
        edits = _stash(shown, data[c["pv_edits"]], [data[b] for b in boxes])
        return show(data, int(shown.get("page", 0)), edits)

    c["cap_done"].change(on_captioned, ins, outs, show_progress="hidden", **PRIVATE)
