"""The Compare tab: pick runs; see what differs, their eval and training loss, speed, memory, LoRA size,
the loss curves (training and eval) and a grid of their samples (rows: runs, columns: steps)."""

from __future__ import annotations

import os
from typing import Any

import gradio as gr
import pandas as pd

from flux2_lora.display import escape
from flux2_lora.experiments.compare import COLUMNS, cell, no_difference, notes, setting_rows
from flux2_lora.experiments.compare_plots import series_colors
from flux2_lora.webui import render
from flux2_lora.webui.tabs import PRIVATE, Shared


def create_compare_tab(shared: Shared, tab: gr.Tab) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        c["pick"] = gr.Dropdown(
            [],
            value=[],
            multiselect=True,
            label="Runs to compare (two or more)",
            elem_id="compare-pick",
            scale=4,
        )
        c["go"] = gr.Button("Compare", variant="primary", elem_id="compare-btn", scale=0)
    c["msg"] = gr.Markdown(elem_id="compare-message")
    c["table"] = gr.Dataframe(interactive=False, wrap=True, elem_id="compare-table", label="Runs")
    c["diff"] = gr.Dataframe(
        interactive=False, wrap=True, elem_id="compare-diff", label="Settings that differ"
    )
    c["curves"] = gr.LinePlot(
        x="step",
        y="loss",
        color="series",
        title="Loss (training and eval) per run",
        height=300,
        elem_id="compare-curves",
    )
    c["grid"] = gr.Image(
        label="Samples (rows: runs; columns: steps; same prompt and seed)",
        type="filepath",
        elem_id="compare-grid",
        buttons=["download", "fullscreen"],
    )
    c["tab"] = tab
    _wire(shared, c)
    return c


def frames(result: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The runs table, the differing settings (one column per run) and the long curves frame; names and
    values as the CLI's table shows them (escaped, "config unreadable" where a config could not be read)."""
    names = [str(r["name"]) for r in result["runs"]]
    table = pd.DataFrame(
        [
            {
                "run": n,
                "state": escape(str(r["state"])),
                **{title: cell(key, r.get(key), f) for key, title, f in COLUMNS},
                "notes": "; ".join(notes(r)),
            }
            for n, r in zip(names, result["runs"])
        ]
    )
    if not table.empty and not table["notes"].any():
        table = table.drop(columns="notes")  # a column only when some run has something to say
    # Columns by position: two runs may share a folder name (a/style, b/style).
    settings = setting_rows(result)
    diff = pd.DataFrame(
        [[k, *cells] for k, cells in settings] or [[no_difference(result), *[""] * len(names)]],
        columns=["setting", *names],
    )
    rows = [
        {"step": s, "loss": v, "series": f"{run} {kind}"}
        for run, curves in result["curves"].items()
        for kind in ("train", "eval")
        for s, v in curves[kind]
    ]
    return table, diff, pd.DataFrame(rows, columns=["step", "loss", "series"])


HEX = "hex:"  # a run folder's path is absolute, so no real one starts with this


def choice_value(path: str) -> str:
    """A run folder as the page can hold it: the path, or, for a name that is not UTF-8 (which no JSON
    reply can carry), its bytes in hex."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return HEX + os.fsencode(path).hex()
    return path


def run_dir(value: str) -> str:
    """The path a choice value stands for (the inverse of :func:`choice_value`)."""
    if isinstance(value, str) and value.startswith(HEX):
        try:
            return os.fsdecode(bytes.fromhex(value[len(HEX) :]))
        except ValueError:
            return value
    return str(value)


def _wire(shared: Shared, c: dict[str, Any]) -> None:
    acts = shared.actions

    def choices(current: list[str] | None) -> Any:
        rows = acts.list_runs()
        values = [choice_value(r["run_dir"]) for r in rows]
        keep = [v for v in (current or []) if v in values]
        labels = [escape(f"{r['name']} ({r['state']})") for r in rows]
        return gr.update(choices=list(zip(labels, values)), value=keep)

    gr.on(
        [shared.runs_changed.change, c["pick"].focus, c["tab"].select],
        choices,
        c["pick"],
        c["pick"],
        show_progress="hidden",
        **PRIVATE,
    )

    def on_compare(picked: list[str] | None) -> dict[Any, Any]:
        r = acts.compare_runs([run_dir(v) for v in picked or []])
        if not r["ok"]:
            return {c["msg"]: render.esc(escape(r["message"]))}
        table, diff, curves = frames(r)
        skipped = sum(bool(notes(s)) for s in r["runs"])
        return {
            c["msg"]: f"{len(r['runs'])} runs compared"
            + (f" ({skipped} with notes: see the table's last column)" if skipped else ""),
            c["table"]: table,
            c["diff"]: diff,
            # One colour per run (its eval a darker shade), however many runs: Vega's default repeats.
            c["curves"]: gr.LinePlot(value=curves, color_map=series_colors(list(r["curves"]))),
            c["grid"]: r["grid_file"],
        }

    c["go"].click(on_compare, c["pick"], [c["msg"], c["table"], c["diff"], c["curves"], c["grid"]], **PRIVATE)
