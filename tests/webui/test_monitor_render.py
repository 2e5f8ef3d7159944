"""What the Runs tab renders, without a browser (issue 22): plot frames the plot reads as numbers, the
status while no run is followed, the log tail, Resume on a finished run, grouped dataset problems, and
Gradio's event record kept short (the estimate's slowdown in a long-lived page)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

gr = pytest.importorskip("gradio")

from flux2_lora import runs  # noqa: E402
from flux2_lora.webui import jobs, render  # noqa: E402
from flux2_lora.webui.paths import AppPaths  # noqa: E402
from flux2_lora.webui.tabs import runs as runs_tab  # noqa: E402

METRICS = [
    {"step": 2, "loss": 1.4435, "lr": 1e-4, "eta_s": 120.0},
    {"step": 4, "loss": 1.3990, "lr": 2e-4, "eta_s": 60.0},
    {"step": 6, "loss": 1.3543, "lr": 3e-4, "eta_s": None},
]


def datatypes(frame: pd.DataFrame, y: str, color: str | None = None) -> dict[str, str]:
    """The column types the plot is drawn with (Gradio's own reading of the frame)."""
    plot = gr.LinePlot(x="step", y=y, color=color)
    return dict(plot.postprocess(frame).datatypes)


def mdf() -> pd.DataFrame:
    return pd.DataFrame(METRICS, columns=runs_tab.METRIC_COLUMNS).apply(pd.to_numeric, errors="coerce")


def test_loss_without_eval_is_a_number_not_a_category() -> None:
    frame = runs_tab.loss_frame(mdf(), [])  # no eval: the concat used to leave an object column
    assert datatypes(frame, "loss", "series") == {
        "step": "quantitative",
        "loss": "quantitative",
        "series": "nominal",
    }
    assert frame["loss"].tolist() == [1.4435, 1.3990, 1.3543]
    both = runs_tab.loss_frame(mdf(), [{"step": 6, "eval_loss": 1.5}])
    assert datatypes(both, "loss", "series")["loss"] == "quantitative" and len(both) == 4


def test_eta_plot_in_minutes() -> None:
    eta = runs_tab.eta_frame(mdf())
    assert eta["minutes"].tolist() == [2.0, 1.0]  # the step without an ETA is left out
    assert datatypes(eta, "minutes") == {"step": "quantitative", "minutes": "quantitative"}


def test_resume_is_disabled_for_a_finished_run() -> None:
    finished = runs_tab.resume_button({"state": "finished", "checkpoints": ["c"]}, live=False)
    assert finished["interactive"] is False and "finished" in finished["value"]
    stopped = runs_tab.resume_button({"state": "stopped", "checkpoints": ["c"]}, live=False)
    assert stopped["interactive"] is True
    assert (
        runs_tab.resume_button({"state": "training", "checkpoints": ["c"]}, live=True)["interactive"] is False
    )


def test_resume_of_a_finished_run_is_refused_at_once(tmp_path: Path) -> None:
    paths = AppPaths.create(str(tmp_path))
    run = tmp_path / "done"
    (run / "checkpoint-10").mkdir(parents=True)
    (run / runs.CONFIG_FILE).write_text("training:\n  max_steps: 10\n")
    status = runs.RunStatus(state=runs.RunState.FINISHED, step=10, total_steps=10)
    runs.write_json_atomic(run / runs.STATUS_FILE, status.to_dict())
    r = jobs.resume_run(paths, str(run))
    assert not r["ok"] and "nothing to resume" in r["errors"][0]["message"]
    assert jobs.monitor.job(run, "train") is None  # no trainer was started


def test_status_while_no_run_is_followed_says_what_there_is() -> None:
    assert "3 runs in the runs folder" in render.status_html({"state": "none"}, 3)
    assert "No run yet" in render.status_html({"state": "none"}, 0)


def test_log_marks_its_newest_line_and_escapes() -> None:
    html = render.log_html("first\n<b>x</b>\nnewest")
    assert '<span class="log-last">newest</span>' in html and "&lt;b&gt;" in html
    assert 'data-lines="3"' in html


def test_one_line_per_distinct_dataset_problem() -> None:
    msg = "smaller than the training resolution 1024: will be upscaled from 128x128"
    problems = {f"demo_{i:02d}.png": [{"severity": "warning", "message": msg}] for i in range(12)}
    rep = {
        "num_items": 12,
        "num_images_found": 12,
        "num_captions": 12,
        "num_missing_captions": 0,
        "num_unused_captions": 0,
        "problems": problems,
    }
    text = render.dataset_markdown({"ok": True, "report": rep})
    assert text.count("will be upscaled") == 1 and "and 9 more" in text


def test_the_apps_event_record_stays_short(tmp_path: Path) -> None:
    from flux2_lora.webui.app import build_app

    demo = build_app(str(tmp_path))
    demo.queue()
    assert demo._queue.ANALYTICS_MAX_EVENTS <= 200
    assert demo._queue.ANAYLTICS_CACHE_FREQUENCY >= 100  # (sic: Gradio's spelling)
