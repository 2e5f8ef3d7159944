"""The Runs tab: the runs of the runs folder, and the monitor of one (status, plots, samples, log).

A timer polls the run directory once a second and sends only what changed. When a run starts or ends
the shared ``runs_changed`` counter moves, and every list of runs or LoRAs reads the disk again.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from flux2_lora.webui import edit_view, render
from flux2_lora.webui.tabs import PRIVATE, Shared, skip
from flux2_lora.webui.tabs.ops import add_ask, ask_outputs, ask_updates, wire_ask

FINAL = ("finished", "failed", "stopped")
RESUME_LABEL = "Resume (latest checkpoint)"
METRIC_COLUMNS = ["step", "loss", "lr", "sec_per_step", "eta_s", "gpu_mem_gib", "rss_gib"]
RANK_COLUMNS = [
    "rank",
    "host",
    "step",
    "GPU peak allocated (GiB)",
    "GPU peak reserved (GiB)",
    "RSS (GiB)",
    "RSS peak (GiB)",
]


def ranks_frame(ranks: list[dict[str, Any]]) -> pd.DataFrame:
    """Every process of a multi-process run with its memory (rank 0 reports the progress above)."""

    def num(v: Any) -> Any:
        return round(float(v), 2) if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"

    rows = [
        [
            r.get("rank"),
            r.get("host") or "",
            r.get("step"),
            num(r.get("gpu_allocated_peak_gib")),
            num(r.get("gpu_reserved_peak_gib")),
            num(r.get("rss_gib")),
            num(r.get("rss_peak_gib")),
        ]
        for r in ranks
    ]
    return pd.DataFrame(rows, columns=RANK_COLUMNS)


def loss_frame(metrics: pd.DataFrame, evals: list[dict[str, Any]]) -> pd.DataFrame:
    """Training loss and eval loss as one long frame (step, loss, series) for a two-line plot."""
    train = metrics[["step", "loss"]].dropna().assign(series="training")
    held = pd.DataFrame(evals, columns=["step", "eval_loss"]).rename(columns={"eval_loss": "loss"})
    frame = pd.concat([train, held.assign(series="eval")], ignore_index=True)
    # Concatenating an empty eval frame leaves object columns, which the plot would draw as categories.
    return frame.astype({"step": float, "loss": float, "series": str})


def eta_frame(metrics: pd.DataFrame) -> pd.DataFrame:
    """The ETA the trainer reported at each logged step, in minutes."""
    eta = metrics[["step", "eta_s"]].dropna()
    return pd.DataFrame({"step": eta["step"].astype(float), "minutes": eta["eta_s"].astype(float) / 60})


# (plot, y column, x column) of each plot; every plot is drawn against the training step.
PLOTS = ("loss", "lr", "memory", "eta")
PLOT_Y = {"loss": "loss", "lr": "lr", "memory": "GiB", "eta": "minutes"}


def plot(name: str, title: str, y_title: str, series: bool = False) -> Any:
    return gr.LinePlot(
        value=None,
        x="step",
        y=PLOT_Y[name],
        color="series" if series else None,
        # The title as the block's label: shown while the plot is still empty too (a Vega title is not).
        label=title,
        show_label=True,
        x_title="training step",
        y_title=y_title,
        height=330,  # the label, the axes and the legend
        elem_id=f"{name}-plot",
    )


def create_runs_tab(shared: Shared, tab: gr.Tab) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        c["pick"] = gr.Dropdown([], value=None, label="Run", elem_id="run-pick", scale=3)
        c["refresh"] = gr.Button("Refresh", size="sm", elem_id="runs-refresh", scale=0)
    c["status"] = gr.HTML(render.status_html({"state": "none"}), elem_id="run-status")
    with gr.Row():
        c["stop"] = gr.Button("Stop", variant="stop", elem_id="stop-btn", interactive=False)
        c["resume"] = gr.Button(RESUME_LABEL, elem_id="resume-btn", interactive=False)
        c.update(add_ask())
        c["lora"] = gr.File(label="LoRA file", elem_id="lora-download", scale=2, height=90)
    c["msg"] = gr.Markdown(elem_id="runs-message")
    c["preflight"] = gr.HTML(render.preflight_html({}), elem_id="preflight-panel")
    # Every axis numeric (float frames: an object column would be drawn as categories) and titled.
    with gr.Row():
        c["loss"] = plot("loss", "Loss (training, and eval when on)", "loss (MSE)", True)
        c["lr"] = plot("lr", "Learning rate", "learning rate")
    with gr.Row():
        c["memory"] = plot("memory", "Memory: measured vs estimate", "GiB", True)
        c["eta"] = plot("eta", "Time left (ETA)", "minutes")
    c["ranks"] = gr.Dataframe(
        value=ranks_frame([]),
        label="Processes (multi-GPU runs): memory of every rank",
        interactive=False,
        visible=False,
        elem_id="ranks-table",
    )
    c["gallery"] = gr.Gallery(
        label="Validation samples (click to enlarge)",
        columns=6,
        height=300,
        object_fit="contain",
        allow_preview=True,
        preview=False,
        elem_id="samples",
    )
    # An HTML block, not a Textbox: its CSS (widgets.CSS) keeps the newest line in view as lines arrive.
    c["log"] = gr.HTML(render.log_html(""), label="Log", elem_id="log-tail")
    with gr.Accordion("All runs (click a row to open it)", open=True):
        c["table"] = gr.Dataframe(
            headers=["run", "state", "step", "of", "LoRA"], interactive=False, elem_id="runs-table"
        )
    c["table_dirs"] = gr.State([])  # the run folder of each row of the table, in its order
    c["tab"] = tab
    _wire(shared, c)
    return c


# (metrics.jsonl key, estimate key, series shown, its estimate's series)
MEMORY_SERIES = (
    ("gpu_mem_gib", "allocated_peak_gib", "GPU allocated (measured)", "GPU allocated (estimate)"),
    ("rss_gib", "host_peak_gib", "host RSS (measured)", "host peak (estimate)"),
)


def memory_frame(metrics: list[dict[str, Any]], estimate: dict[str, Any]) -> pd.DataFrame:
    """Measured memory next to the estimate of the same quantity: GPU peak allocated (when the run was on
    a GPU) and host RSS against the host RAM estimate."""
    rows = []
    for m in metrics:
        for measured, estimated, label, estimate_label in MEMORY_SERIES:
            if m.get(measured) is None:  # a CPU run has no GPU figure
                continue
            rows.append({"step": m["step"], "GiB": m[measured], "series": label})
            if estimate.get(estimated) is not None:
                rows.append({"step": m["step"], "GiB": estimate[estimated], "series": estimate_label})
    frame = pd.DataFrame(rows, columns=["step", "GiB", "series"])
    return frame.astype({"step": float, "GiB": float})


def _phase(state: Any) -> str:
    return "final" if state in FINAL else "pending" if state in ("none", "starting", None) else "live"


def _plot(frame: pd.DataFrame) -> pd.DataFrame | None:
    """None clears a plot (its label still says what it will show); an empty frame would be drawn once
    with a narrow axis margin that clips the tick labels, and colourless series, when data comes."""
    return frame if len(frame) else None


def run_estimate(snap: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """The memory model's figures for the run's own config and device (torch-free, cached per config)."""
    from pathlib import Path

    from flux2_lora import runs

    return _estimate_for(
        str(Path(run_dir) / runs.CONFIG_FILE), str((snap.get("extra") or {}).get("device", ""))
    )


_CACHE: dict[tuple[str, str, float], dict[str, Any]] = {}


def _estimate_for(config_file: str, device: str) -> dict[str, Any]:
    import os

    from flux2_lora.config.io import read_yaml, validate_dict

    try:
        stamp = os.stat(config_file).st_mtime
    except OSError:
        return {}
    key = (config_file, device, stamp)
    if key not in _CACHE:
        data, _ = read_yaml(config_file)
        parsed, _ = validate_dict(data if isinstance(data, dict) else {})
        out: dict[str, Any] = {}
        if parsed is not None:
            try:
                from flux2_lora.memory import estimate
                from flux2_lora.memory.host import host_estimate

                out["allocated_peak_gib"] = estimate(parsed).allocated_peak_gib
                out["host_peak_gib"] = host_estimate(parsed, on_gpu=device.startswith("cuda"))["peak_gib"]
            except Exception:  # an estimate that cannot be made leaves the measured lines alone
                out = {}
        _CACHE[key] = out
    return _CACHE[key]


def resume_button(snap: dict[str, Any], live: bool) -> Any:
    """Resume only where there is something to train: never for a live run, a run without a checkpoint,
    or a finished run (all its steps are trained: resuming would retrain nothing)."""
    if snap.get("state") == "finished":
        return gr.update(interactive=False, value="Resume: nothing left (run finished)")
    return gr.update(interactive=not live and bool(snap.get("checkpoints")), value=RESUME_LABEL)


def _wire(shared: Shared, c: dict[str, Any]) -> None:
    acts = shared.actions
    last_sig = gr.State(None)

    def runs_lists(current: str | None = None) -> dict[Any, Any]:
        rows = acts.list_runs()
        table = [
            [r["name"], r["state"], r["step"], r["total_steps"], "yes" if r["lora"] else ""] for r in rows
        ]
        choices = [(r["name"], r["run_dir"]) for r in rows]
        if current and current not in [d for _, d in choices]:
            choices.insert(0, (current.rstrip("/").rsplit("/", 1)[-1], current))  # started, no status yet
        pick = gr.update(choices=choices, value=current) if current else gr.update(choices=choices)
        out = {c["table"]: table, c["pick"]: pick, c["table_dirs"]: [r["run_dir"] for r in rows]}
        # Nothing followed yet: say what there is to open rather than "no run yet".
        out[c["status"]] = gr.skip() if current else render.status_html({"state": "none"}, len(rows))
        return out

    gr.on(
        [
            c["refresh"].click,
            shared.runs_changed.change,
            c["pick"].focus,
            c["tab"].select,
        ],
        lambda rd: runs_lists(rd),
        shared.run_dir,
        [c["table"], c["pick"], c["table_dirs"], c["status"]],
        show_progress="hidden",
        **PRIVATE,
    )
    # Following a run: picking one, or a run started from the Train tab.
    c["pick"].input(lambda rd: (rd, None), c["pick"], [shared.run_dir, last_sig], **PRIVATE)

    def on_row(dirs: list[str], evt: gr.SelectData) -> Any:
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not isinstance(row, int) or not 0 <= row < len(dirs or []):
            return gr.skip(), gr.skip(), gr.skip()
        return dirs[row], None, gr.update(value=dirs[row])

    c["table"].select(on_row, c["table_dirs"], [shared.run_dir, last_sig, c["pick"]], **PRIVATE)

    outputs = [
        c["stop"],
        c["resume"],
        c["status"],
        c["loss"],
        c["lr"],
        c["memory"],
        c["eta"],
        c["gallery"],
        c["ranks"],
        c["log"],
        c["lora"],
        c["preflight"],
        *ask_outputs(c),
    ]

    tick_outputs = [*outputs, last_sig, shared.runs_changed]

    def tick(data: dict[Any, Any]) -> dict[Any, Any]:
        run_dir, sig0 = data[shared.run_dir], data[last_sig]
        if not run_dir:
            return skip(tick_outputs)
        snap = acts.run_status(run_dir)
        metrics = snap.get("metrics", [])
        pre = snap.get("preflight") or {}
        sig = [
            snap.get("state"),
            snap.get("step"),
            len(metrics),
            len(snap.get("evals", [])),
            len(snap.get("samples", [])),
            snap.get("log", "")[-200:],
            snap.get("lora"),
            [(r.get("rank"), r.get("step")) for r in snap.get("ranks", [])],
            pre.get("running"),
            bool(pre.get("result")),
            (pre.get("output") or "")[-120:],
        ]
        if sig == sig0:
            return skip(tick_outputs)
        out: dict[Any, Any] = {last_sig: sig}
        # A run that just got its status (so it is listed) or just ended changes what the lists show.
        if sig0 is not None and _phase(sig0[0]) != _phase(snap.get("state")):
            out[shared.runs_changed] = data[shared.runs_changed] + 1
        mdf = (
            pd.DataFrame(metrics, columns=METRIC_COLUMNS).apply(pd.to_numeric, errors="coerce").astype(float)
        )
        live = snap.get("state") not in ("none", *FINAL)
        out.update(
            {
                c["stop"]: gr.update(interactive=live or bool(pre.get("running"))),
                c["resume"]: resume_button(snap, live),
                c["status"]: render.status_html(snap),
                c["loss"]: _plot(loss_frame(mdf, snap.get("evals", []))),
                c["lr"]: _plot(mdf[["step", "lr"]].dropna().astype(float)),
                c["memory"]: _plot(memory_frame(metrics, run_estimate(snap, run_dir) if metrics else {})),
                c["eta"]: _plot(eta_frame(mdf)),
                c["gallery"]: edit_view.gallery_items(snap.get("samples", [])),
                c["log"]: render.log_html(snap.get("log", "")),
                c["lora"]: snap.get("lora"),
                c["ranks"]: gr.update(
                    value=ranks_frame(snap.get("ranks", [])), visible=len(snap.get("ranks", [])) > 1
                ),
                c["preflight"]: render.preflight_html(pre),
                **ask_updates(c, snap),
            }
        )
        return out

    timer = shared.timer("runs")
    timer.tick(
        tick,
        {shared.run_dir, last_sig, shared.runs_changed},
        tick_outputs,
        show_progress="hidden",
        **PRIVATE,
    )

    def on_stop(rd: str) -> str:
        r = acts.stop_run(rd or "")
        return render.esc(r["message"])

    c["stop"].click(on_stop, shared.run_dir, c["msg"], **PRIVATE)
    wire_ask(shared, c)

    def on_resume(data: dict[Any, Any]) -> dict[Any, Any]:
        r = acts.resume_run(data[shared.run_dir] or "")
        if not r["ok"]:
            return {c["msg"]: render.errors_markdown(r["errors"])}
        return {
            c["msg"]: "Resumed from the latest checkpoint",
            shared.run_dir: r["run_dir"],
            last_sig: None,
            shared.runs_changed: data[shared.runs_changed] + 1,
        }

    c["resume"].click(
        on_resume,
        {shared.run_dir, shared.runs_changed},
        [c["msg"], shared.run_dir, last_sig, shared.runs_changed],
        **PRIVATE,
    )
