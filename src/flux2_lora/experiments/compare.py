"""Compare runs: the settings that differ, eval and training loss, speed, memory and LoRA size, their
loss curves overlaid, and a grid of their samples (no torch; images with PIL).

Everything is read from the run directories (config.yaml, status.json, metrics.jsonl, eval.jsonl,
samples/index.jsonl), so any finished, stopped or failed run — a sweep's trials included — compares.
"""

from __future__ import annotations

import base64
import html
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flux2_lora import runs
from flux2_lora.config.io import read_yaml
from flux2_lora.display import escape
from flux2_lora.experiments.compare_plots import curves_png, sample_grid_png

# Fields that differ between any two runs without telling anything about them.
_IGNORED = {"output.dir"}
CONFIG_UNREADABLE = "config unreadable"
MAX_STEP = 10**12  # far past any run's max_steps: a larger "step" is not a step
SMOOTHED = 5  # the smoothed train loss is the mean of this many last logged losses


class CompareError(ValueError):
    """A run that cannot be compared; the message names its folder."""


def finite(v: Any) -> float | None:
    """A finite number read from disk, else None (NaN, ±Infinity, a string, a bool, a list...)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        f = float(v)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return f if math.isfinite(f) else None


def _step(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_STEP else None


@dataclass
class Curve:
    """One value per logged step of a JSONL file, and the lines that gave none."""

    points: list[tuple[int, float]] = field(default_factory=list)
    non_finite: int = 0  # lines whose value is NaN, ±Infinity or null: the run diverged there
    bad: int = 0  # lines skipped as damaged or of the wrong types ("step": "x", a string loss, a list)


def _complete_lines(path: Path) -> int:
    try:
        data = path.read_bytes() if path.is_file() else b""
    except OSError:
        return 0
    return sum(1 for line in data.split(b"\n")[:-1] if line.strip())


def read_curve(path: Path, key: str) -> Curve:
    """``(step, value)`` of every line of ``path`` whose step is a step and whose ``key`` is a finite
    number; the others are counted (a reader of files from disk, which may hold anything)."""
    curve = Curve()
    records = runs.read_jsonl(path)
    for rec in records:
        step, raw = _step(rec.get("step")), rec.get(key)
        value = finite(raw)
        if step is not None and value is not None:
            curve.points.append((step, value))
        elif step is not None and key in rec and (raw is None or isinstance(raw, float)):
            curve.non_finite += 1
    curve.bad = max(0, _complete_lines(path) - len(curve.points) - curve.non_finite)
    return curve


@dataclass
class RunRecord:
    path: Path
    config: dict[str, Any]
    config_error: str | None
    status: dict[str, Any]
    train: Curve
    evals: Curve
    sec_per_step: list[float]
    samples: list[dict[str, Any]]
    lora_bytes: int | None
    summary: dict[str, Any] = field(default_factory=dict)
    label: str = ""  # the name shown; load_runs makes it unique among the runs compared

    @property
    def name(self) -> str:
        return self.label or escape(self.path.name)


def _samples(run: Path) -> list[dict[str, Any]]:
    """The sample index's usable entries: an int step and index, a text prompt, a file name."""
    out = []
    for s in runs.read_jsonl(run / runs.SAMPLES_INDEX):
        step, index = _step(s.get("step")), _step(s.get("index", 0))
        texts = isinstance(s.get("prompt"), str) and isinstance(s.get("file"), str)
        if step is not None and index is not None and texts:
            out.append({**s, "step": step, "index": index})
    return out


def _config(run: Path) -> tuple[dict[str, Any], str | None]:
    """The run's config, or ({}, why it cannot be read)."""
    data, issues = read_yaml(run / runs.CONFIG_FILE)
    if issues:
        return {}, escape(issues[0].message.replace(str(run / runs.CONFIG_FILE), runs.CONFIG_FILE))
    if not isinstance(data, dict) or not data:
        kind = "nothing" if not data else f"a {type(data).__name__}"
        return {}, f"{runs.CONFIG_FILE} holds {kind}, not a config"
    return data, None


def load_run(path: str | Path) -> RunRecord:
    run = Path(path).expanduser()
    try:
        if not (run / runs.STATUS_FILE).is_file():
            raise CompareError(f"{escape(run)}: not a run folder (no {runs.STATUS_FILE})")
        config, config_error = _config(run)
        status = runs.read_status(run)
        lora = run / runs.LORA_FILE
        speeds = [finite(m.get("sec_per_step")) for m in runs.read_jsonl(run / runs.METRICS_FILE)]
        record = RunRecord(
            path=run,
            config=config,
            config_error=config_error,
            status=status.to_dict() if status else {},
            train=read_curve(run / runs.METRICS_FILE, "loss"),
            evals=read_curve(run / runs.EVAL_FILE, "eval_loss"),
            sec_per_step=[v for v in speeds if v is not None and v > 0],
            samples=_samples(run),
            lora_bytes=lora.stat().st_size if lora.is_file() else None,
        )
    except OSError as e:
        raise CompareError(
            f"{escape(run)}: cannot read {escape(e.filename or '')}: {e.strerror or e}"
        ) from None
    return record


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def differing_fields(records: list[RunRecord]) -> dict[str, list[Any]]:
    """Config fields (dotted paths) whose values are not the same in every run whose config could be read,
    with each run's value (None for a run whose config is unreadable: see its summary's config_error)."""
    flat = [_flatten(r.config) if r.config_error is None else None for r in records]
    readable = [f for f in flat if f is not None]
    keys = sorted({str(k) for f in readable for k in f} - _IGNORED)
    return {
        k: [f.get(k) if f is not None else None for f in flat]
        for k in keys
        if len({repr(f.get(k)) for f in readable}) > 1
    }


def _gib(section: Any, key: str) -> float | None:
    return finite(section.get(key)) if isinstance(section, dict) else None


def summarize(r: RunRecord) -> dict[str, Any]:
    st = r.status
    extra: dict[str, Any] = st["extra"] if isinstance(st.get("extra"), dict) else {}
    measured, estimate = extra.get("measured"), extra.get("estimate")
    started, updated = finite(st.get("started_at")), finite(st.get("updated_at"))
    losses = [v for _, v in r.train.points]
    evals = r.evals.points
    best = min(evals, key=lambda e: e[1]) if evals else None
    return {
        "run": escape(r.path),  # shown, and sent to the UI as JSON: no lone surrogates
        "name": r.name,
        "state": st.get("state"),
        "steps": st.get("step"),
        "final_eval_loss": evals[-1][1] if evals else None,
        "best_eval_loss": best[1] if best else None,
        "best_eval_step": best[0] if best else None,
        # The last logged loss (itself a mean over log_every steps); the smoothed one is labelled so.
        "final_train_loss": losses[-1] if losses else None,
        "train_loss_mean_last5": statistics.fmean(losses[-SMOOTHED:]) if losses else None,
        "sec_per_step": statistics.median(r.sec_per_step)
        if r.sec_per_step
        else finite(st.get("seconds_per_step")),
        "wall_s": (updated - started) if started and updated and updated >= started else None,
        "gpu_peak_gib_measured": _gib(measured, "gpu_allocated_peak_gib"),
        "gpu_peak_gib_estimated": _gib(estimate, "allocated_peak_gib"),
        "host_peak_gib_measured": _gib(measured, "host_peak_rss_gib"),
        "host_peak_gib_estimated": _gib(estimate, "host_peak_gib"),
        "lora_bytes": r.lora_bytes,
        "non_finite_losses": r.train.non_finite + r.evals.non_finite,
        "skipped_lines": r.train.bad + r.evals.bad,
        "config_error": r.config_error,
    }


def notes(summary: dict[str, Any]) -> list[str]:
    """What the figures of one run leave out: lines skipped, an unreadable config."""
    out = []
    if summary.get("non_finite_losses"):
        out.append(f"{summary['non_finite_losses']} non-finite losses (NaN/Infinity: the run diverged)")
    if summary.get("skipped_lines"):
        out.append(f"{summary['skipped_lines']} damaged or malformed log lines skipped")
    if summary.get("config_error"):
        out.append(f"{CONFIG_UNREADABLE}: {summary['config_error']}")
    return out


def load_runs(paths: Sequence[str | Path]) -> list[RunRecord]:
    if len(paths) < 2:
        raise CompareError("compare needs at least two runs")
    records = [load_run(p) for p in paths]
    # Trials of two sweeps are both trial-0000: such runs are shown with as many parent folders as it
    # takes to tell them apart (a run given twice keeps a number).
    where = [Path(os.path.abspath(r.path)) for r in records]
    for depth in range(1, 4):
        labels = [escape("/".join(w.parts[-depth:])) for w in where]
        if len(set(labels)) == len(set(where)):
            break
    seen: dict[str, int] = {}
    for r, label in zip(records, labels):
        seen[label] = seen.get(label, 0) + 1
        r.label = label if seen[label] == 1 else f"{label} ({seen[label]})"
        r.summary = summarize(r)
    return records


def compare(records: list[RunRecord]) -> dict[str, Any]:
    return {
        "runs": [r.summary for r in records],
        "differing_fields": differing_fields(records),
        "curves": {
            r.name: {"train": [list(p) for p in r.train.points], "eval": [list(p) for p in r.evals.points]}
            for r in records
        },
    }


def jsonable(value: Any) -> Any:
    """``value`` with every non-finite float as None: JSON has no NaN (a config may hold ``.nan``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def no_difference(result: dict[str, Any]) -> str:
    """What an empty list of differing settings means, given how many configs could be read."""
    unreadable = sum(bool(s.get("config_error")) for s in result["runs"])
    if len(result["runs"]) - unreadable < 2:
        return (
            f"settings not compared: {unreadable} of {len(result['runs'])} configs are unreadable (see notes)"
        )
    among = f" among the {len(result['runs']) - unreadable} readable configs" if unreadable else ""
    return f"no setting differs{among} (besides output.dir)"


def setting_rows(result: dict[str, Any], width: int = 200) -> list[tuple[str, list[str]]]:
    """The differing settings as text, one cell per run ("config unreadable" for such a run)."""
    unreadable = [bool(s.get("config_error")) for s in result["runs"]]
    rows = []
    for key, values in result["differing_fields"].items():
        cells = [CONFIG_UNREADABLE if bad else escape(repr(v))[:width] for v, bad in zip(values, unreadable)]
        rows.append((escape(key), cells))
    return rows


# -------------------------------------------------------------------------------------------- reports
COLUMNS = [
    ("final_eval_loss", "final eval loss", "{:.5f}"),
    ("best_eval_loss", "best eval loss", "{:.5f}"),
    ("final_train_loss", "last train loss", "{:.4f}"),
    ("train_loss_mean_last5", f"train loss, mean of last {SMOOTHED}", "{:.4f}"),
    ("sec_per_step", "s/step", "{:.3f}"),
    ("wall_s", "wall s", "{:.0f}"),
    ("gpu_peak_gib_measured", "GPU peak GiB", "{:.2f}"),
    ("gpu_peak_gib_estimated", "GPU est GiB", "{:.2f}"),
    ("host_peak_gib_measured", "host peak GiB", "{:.2f}"),
    ("host_peak_gib_estimated", "host est GiB", "{:.2f}"),
    ("lora_bytes", "LoRA MB", "{:.1f}"),
]


def cell(key: str, value: Any, fmt: str) -> str:
    """One figure as the table shows it (— when the run has none, or what it has is not a number)."""
    number = finite(value)
    if number is None:
        return "—"
    return fmt.format(number / 1e6 if key == "lora_bytes" else number)


def _rows(result: dict[str, Any]) -> list[list[str]]:
    return [
        [str(s["name"]), escape(str(s["state"])), *[cell(k, s.get(k), f) for k, _, f in COLUMNS]]
        for s in result["runs"]
    ]


def table_text(result: dict[str, Any]) -> str:
    rows = [["run", "state", *[title for _, title, _ in COLUMNS]], *_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    settings = setting_rows(result)
    if settings:
        lines += ["", "settings that differ:"]
        lines += [f"  {k}: " + " | ".join(cells) for k, cells in settings]
    else:
        lines += ["", no_difference(result)]
    remarks = [(s["name"], n) for s in result["runs"] for n in notes(s)]
    if remarks:
        lines += ["", "notes:"] + [f"  {name}: {n}" for name, n in remarks]
    return "\n".join(lines)


def html_report(result: dict[str, Any], curves: bytes, grid: bytes | None) -> str:
    def img(data: bytes) -> str:
        return f'<img alt="" src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    def row(cells: list[str], tag: str = "td") -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"

    head = row(["run", "state", *[t for _, t, _ in COLUMNS]], "th")
    body = "".join(row(r) for r in _rows(result))
    diff = "".join(row([k, *cells]) for k, cells in setting_rows(result))
    remarks = "".join(
        f"<li>{html.escape(str(s['name']))}: {html.escape(n)}</li>" for s in result["runs"] for n in notes(s)
    )
    return (
        "<!doctype html><meta charset='utf-8'><title>flux2-lora compare</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;border-bottom:1px solid #ddd}</style>"
        f"<h2>Runs</h2><table>{head}{body}</table>"
        + (f"<ul>{remarks}</ul>" if remarks else "")
        + f"<h2>Settings that differ</h2><table>{diff or row([no_difference(result)])}</table>"
        f"<h2>Loss</h2>{img(curves)}" + (f"<h2>Samples</h2>{img(grid)}" if grid else "")
    )


def write_outputs(
    paths: Sequence[str | Path],
    *,
    html_file: Path | None = None,
    grid_file: Path | None = None,
    curves_file: Path | None = None,
) -> dict[str, Any]:
    """The comparison, and whichever of the HTML report, sample grid and curves PNG were asked for."""
    records = load_runs(paths)
    result = compare(records)
    curves = curves_png(records)
    grid, grid_info = sample_grid_png(records)
    result["grid"] = grid_info
    if curves_file:
        curves_file.write_bytes(curves)
    if grid_file:
        grid_file.write_bytes(grid)
    if html_file:
        html_file.write_text(
            html_report(result, curves, grid if grid_info["steps"] else None), encoding="utf-8"
        )
    return result
