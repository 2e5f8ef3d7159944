"""The Compare tab: pick runs; see what differs, their eval and training loss, speed, memory, LoRA size,
the loss curves (training and eval) and a grid of their samples (rows: runs, columns: steps)."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from flux2_lora.experiments.compare import COLUMNS, cell
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
    """The runs table, the differing settings (one column per run) and the long curves frame."""
    names = [r["run"].rsplit("/", 1)[-1] for r in result["runs"]]
    table = pd.DataFrame(
        [
            {"run": n, "state": r["state"], **{title: cell(key, r.get(key), f) for key, title, f in COLUMNS}}
            for n, r in zip(names, result["runs"])
        ]
    )
    diff = pd.DataFrame(
        [
            {"setting": k, **{n: repr(v) for n, v in zip(names, vals)}}
            for k, vals in result["differing_fields"].items()
        ]
    )
    rows = [
        {"step": s, "loss": v, "series": f"{run} {kind}"}
        for run, curves in result["curves"].items()
        for kind in ("train", "eval")
        for s, v in curves[kind]
    ]
    return table, diff, pd.DataFrame(rows, columns=["step", "loss", "series"])


def _wire(shared: Shared, c: dict[str, Any]) -> None:
    acts = shared.actions

    def choices(current: list[str] | None) -> Any:
        rows = acts.list_runs()
        values = [r["run_dir"] for r in rows]
        keep = [v for v in (current or []) if v in values]
        return gr.update(choices=[(f"{r['name']} ({r['state']})", r["run_dir"]) for r in rows], value=keep)

    gr.on(
        [shared.blocks.load, shared.runs_changed.change, c["pick"].focus, c["tab"].select],
        choices,
        c["pick"],
        c["pick"],
        show_progress="hidden",
        **PRIVATE,
    )

    def on_compare(picked: list[str] | None) -> dict[Any, Any]:
        r = acts.compare_runs(list(picked or []))
        if not r["ok"]:
            return {c["msg"]: render.esc(r["message"])}
        table, diff, curves = frames(r)
        return {
            c["msg"]: f"{len(r['runs'])} runs compared",
            c["table"]: table,
            c["diff"]: diff if len(diff) else pd.DataFrame([{"setting": "none differ (besides output.dir)"}]),
            c["curves"]: curves,
            c["grid"]: r["grid_file"],
        }

    c["go"].click(on_compare, c["pick"], [c["msg"], c["table"], c["diff"], c["curves"], c["grid"]], **PRIVATE)
