"""The Queue tab: the training queue of the runs folder (queued, running and ended jobs), Cancel, and the
runner that starts them one after the other (webui/ops.py). The queue is on disk, so a reopened UI shows
it as it was; a timer re-reads it once a second and sends only what changed."""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from flux2_lora.webui import render
from flux2_lora.webui.tabs import PRIVATE, Shared, go_to, skip

COLUMNS = ["job", "state", "GPU", "run", "added", "started", "ended", "message"]
LIVE = ("queued", "running")


def _when(t: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else ""


def queue_rows(jobs: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            j["id"],
            j["state"] + (" (stop asked)" if j.get("cancel_requested") and j["state"] == "running" else ""),
            j.get("gpu") or "",  # the CUDA device a worker with several GPUs gave the job
            j["name"],
            _when(j.get("added_at")),
            _when(j.get("started_at")),
            _when(j.get("ended_at")),
            j.get("message") or "",
        ]
        for j in jobs
    ]


def summary_html(q: dict[str, Any]) -> str:
    """One line on the queue; data-states (each job's state, oldest first) and data-worker for tests."""
    jobs = q.get("jobs", [])
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j["state"]] = counts.get(j["state"], 0) + 1
    if q.get("runner"):
        worker = "this UI runs the queue"
    elif q.get("worker"):
        worker = "another worker (flux2-lora queue run) runs the queue"
    else:
        worker = "no worker: Add to queue (or Run the queue) starts one"
    said = ", ".join(f"{n} {s}" for s, n in counts.items()) or "the queue is empty"
    problems = "".join(f"<br>⚠ {render.esc(p)}" for p in q.get("problems", []))
    states = ",".join(j["state"] for j in jobs)
    on = [f"{j['id']} on GPU {j['gpu']}" for j in jobs if j["state"] == "running" and j.get("gpu")]
    said += f" ({', '.join(on)})" if on else ""
    gpus = ",".join(j.get("gpu") or "-" for j in jobs)
    return (
        f'<div id="queue-state" data-states="{render.esc(states)}" data-gpus="{render.esc(gpus)}" '
        f'data-worker="{int(bool(q.get("worker")))}">'
        f"{render.esc(said)} · {render.esc(worker)}{problems}</div>"
    )


def create_queue_tab(shared: Shared, tab: gr.Tab) -> dict[str, Any]:
    c: dict[str, Any] = {"tab": tab}
    gr.Markdown(
        "Runs queued from the Train tab (**Add to queue**) or with `flux2-lora queue add` train one after "
        "the other; on a machine with several GPUs, one job on each GPU the memory estimate says it fits "
        "(its GPU is shown). A job starts only when no trainer outside the queue runs in this runs folder."
    )
    c["summary"] = gr.HTML(summary_html({}), elem_id="queue-summary")
    c["table"] = gr.Dataframe(
        headers=COLUMNS, interactive=False, elem_id="queue-table", label="Jobs (oldest first; click a row)"
    )
    with gr.Row():
        c["pick"] = gr.Dropdown([], value=None, label="Job", elem_id="queue-pick", scale=2)
        c["cancel"] = gr.Button("Cancel job", variant="stop", elem_id="queue-cancel", interactive=False)
        c["open"] = gr.Button("Open its run", elem_id="queue-open", interactive=False)
        c["run"] = gr.Button("Run the queue", elem_id="queue-run", interactive=False)
    c["msg"] = gr.Markdown(elem_id="queue-message")
    _wire(shared, c)
    return c


def _wire(shared: Shared, c: dict[str, Any]) -> None:
    acts = shared.actions
    last = gr.State(None)
    jobs_state = gr.State([])  # the listed jobs: [id, state, run_dir] in the table's order
    outs = [c["summary"], c["table"], c["pick"], c["run"], jobs_state, last]

    def refresh(data: dict[Any, Any]) -> dict[Any, Any]:
        q = acts.queue_list()
        sig = [
            (j["id"], j["state"], j.get("gpu"), j.get("message"), j.get("cancel_requested"))
            for j in q["jobs"]
        ]
        sig += [q["worker"], q["runner"], tuple(q["problems"])]
        if sig == data[last]:
            return skip(outs)
        queued = any(j["state"] == "queued" for j in q["jobs"])
        choices = [(f"{j['id']} · {j['name']} · {j['state']}", j["id"]) for j in q["jobs"]]
        pick = data[c["pick"]]
        return {
            c["summary"]: summary_html(q),
            c["table"]: queue_rows(q["jobs"]),
            c["pick"]: gr.update(choices=choices, value=pick if pick in [i for _, i in choices] else None),
            c["run"]: gr.update(interactive=queued and not q["worker"]),
            jobs_state: [[j["id"], j["state"], j["run_dir"]] for j in q["jobs"]],
            last: sig,
        }

    refresh_in = {last, c["pick"]}
    gr.on([c["tab"].select], refresh, refresh_in, outs, show_progress="hidden", **PRIVATE)
    shared.timer("queue").tick(refresh, refresh_in, outs, show_progress="hidden", **PRIVATE)

    def buttons(job_id: str | None, jobs: list[list[str]]) -> dict[Any, Any]:
        job = next((j for j in jobs or [] if j[0] == job_id), None)
        return {
            c["cancel"]: gr.update(interactive=job is not None and job[1] in LIVE),
            c["open"]: gr.update(interactive=job is not None),
        }

    gr.on(
        [c["pick"].change, jobs_state.change],
        buttons,
        [c["pick"], jobs_state],
        [c["cancel"], c["open"]],
        show_progress="hidden",
        **PRIVATE,
    )

    def on_row(jobs: list[list[str]], evt: gr.SelectData) -> Any:
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not isinstance(row, int) or not 0 <= row < len(jobs or []):
            return gr.skip()
        return gr.update(value=jobs[row][0])

    c["table"].select(on_row, jobs_state, c["pick"], **PRIVATE)

    def on_cancel(job_id: str | None) -> dict[Any, Any]:
        r = acts.queue_cancel(job_id or "")
        return {c["msg"]: ("✔ " if r["ok"] else "✘ ") + render.esc(r["message"]), last: None}

    c["cancel"].click(on_cancel, c["pick"], [c["msg"], last], **PRIVATE)

    def on_run() -> dict[Any, Any]:
        r = acts.queue_run()
        return {c["msg"]: render.esc(r["message"]), last: None}

    c["run"].click(on_run, None, [c["msg"], last], **PRIVATE)

    def on_open(job_id: str | None, jobs: list[list[str]]) -> dict[Any, Any]:
        job = next((j for j in jobs or [] if j[0] == job_id), None)
        if job is None:
            return {c["msg"]: "choose a job"}
        return {shared.run_dir: job[2], shared.goto_tab: go_to("runs")}

    c["open"].click(on_open, [c["pick"], jobs_state], [c["msg"], shared.run_dir, shared.goto_tab], **PRIVATE)
