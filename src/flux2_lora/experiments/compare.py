"""Compare runs: the settings that differ, eval and training loss, speed, memory and LoRA size, their
loss curves overlaid, and a grid of their samples (no torch; images with PIL).

Everything is read from the run directories (config.yaml, status.json, metrics.jsonl, eval.jsonl,
samples/index.jsonl), so any finished, stopped or failed run — a sweep's trials included — compares.
"""

from __future__ import annotations

import base64
import html
import io
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flux2_lora import runs
from flux2_lora.config.io import read_yaml
from flux2_lora.display import escape

# Fields that differ between any two runs without telling anything about them.
_IGNORED = {"output.dir"}
# Colours of the runs in the curves (colour-blind safe, Okabe–Ito).
PALETTE = [(0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233), (213, 94, 0)]


class CompareError(ValueError):
    """A run that cannot be compared; the message names its folder."""


@dataclass
class RunRecord:
    path: Path
    config: dict[str, Any]
    status: dict[str, Any]
    metrics: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    lora_bytes: int | None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return escape(self.path.name)


def load_run(path: str | Path) -> RunRecord:
    run = Path(path).expanduser()
    if not (run / runs.STATUS_FILE).is_file():
        raise CompareError(f"{escape(run)}: not a run folder (no {runs.STATUS_FILE})")
    data, issues = read_yaml(run / runs.CONFIG_FILE)
    config = data if isinstance(data, dict) and not issues else {}
    status = runs.read_status(run)
    lora = run / runs.LORA_FILE
    record = RunRecord(
        path=run,
        config=config,
        status=status.to_dict() if status else {},
        metrics=runs.read_jsonl(run / runs.METRICS_FILE),
        evals=runs.read_eval(run),
        samples=runs.read_jsonl(run / runs.SAMPLES_INDEX),
        lora_bytes=lora.stat().st_size if lora.is_file() else None,
    )
    record.summary = summarize(record)
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
    """Config fields (dotted paths) whose values are not the same in every run, with each run's value."""
    flat = [_flatten(r.config) for r in records]
    keys = sorted({k for f in flat for k in f} - _IGNORED)
    return {k: [f.get(k) for f in flat] for k in keys if len({repr(f.get(k)) for f in flat}) > 1}


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def summarize(r: RunRecord) -> dict[str, Any]:
    st, extra = r.status, r.status.get("extra") or {}
    losses = [m["loss"] for m in r.metrics if _num(m.get("loss")) is not None]
    evals = [e["eval_loss"] for e in r.evals]
    sps = [m["sec_per_step"] for m in r.metrics if _num(m.get("sec_per_step"))]
    measured, estimate = extra.get("measured") or {}, extra.get("estimate") or {}
    started, updated = _num(st.get("started_at")), _num(st.get("updated_at"))
    best = min(r.evals, key=lambda e: e["eval_loss"]) if r.evals else None
    return {
        "run": str(r.path),
        "state": st.get("state"),
        "steps": st.get("step"),
        "final_eval_loss": evals[-1] if evals else None,
        "best_eval_loss": best["eval_loss"] if best else None,
        "best_eval_step": best["step"] if best else None,
        # The last logged value is a mean over log_every steps; the tail of five is steadier still.
        "final_train_loss": statistics.fmean(losses[-5:]) if losses else None,
        "sec_per_step": statistics.median(sps) if sps else st.get("seconds_per_step"),
        "wall_s": (updated - started) if started and updated else None,
        "gpu_peak_gib_measured": measured.get("gpu_allocated_peak_gib"),
        "gpu_peak_gib_estimated": estimate.get("allocated_peak_gib"),
        "host_peak_gib_measured": measured.get("host_peak_rss_gib"),
        "host_peak_gib_estimated": estimate.get("host_peak_gib"),
        "lora_bytes": r.lora_bytes,
    }


def load_runs(paths: list[str | Path]) -> list[RunRecord]:
    if len(paths) < 2:
        raise CompareError("compare needs at least two runs")
    return [load_run(p) for p in paths]


def compare(records: list[RunRecord]) -> dict[str, Any]:
    return {
        "runs": [r.summary for r in records],
        "differing_fields": differing_fields(records),
        "curves": {
            r.name: {
                "train": [[m["step"], m["loss"]] for m in r.metrics if _num(m.get("loss")) is not None],
                "eval": [[e["step"], e["eval_loss"]] for e in r.evals],
            }
            for r in records
        },
    }


# -------------------------------------------------------------------------------------------- pictures
def _font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default()


def curves_png(records: list[RunRecord], size: tuple[int, int] = (900, 420)) -> bytes:
    """Training loss (thin) and eval loss (thick, with markers) of every run, one colour per run."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 60, 20, 20, 70
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    series = []
    for i, r in enumerate(records):
        color = PALETTE[i % len(PALETTE)]
        train = [(m["step"], m["loss"]) for m in r.metrics if _num(m.get("loss")) is not None]
        evals = [(e["step"], e["eval_loss"]) for e in r.evals]
        series += [(train, color, 1, False), (evals, color, 3, True)]
    points = [p for s, *_ in series for p in s]
    if not points:
        draw.text((left, top), "no losses logged", fill="black", font=_font())
        return _png(img)
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points) or 1
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    if y1 == y0:
        y1 = y0 + 1e-6
    if x1 == x0:
        x1 = x0 + 1

    def xy(step: float, loss: float) -> tuple[float, float]:
        return (
            left + (step - x0) / (x1 - x0) * (w - left - right),
            top + (y1 - loss) / (y1 - y0) * (h - top - bottom),
        )

    draw.rectangle([left, top, w - right, h - bottom], outline=(120, 120, 120))
    for k in range(5):
        y = y0 + (y1 - y0) * k / 4
        _, py = xy(x0, y)
        draw.text((4, py - 6), f"{y:.4g}", fill="black", font=_font())
    for k in range(5):
        x = x0 + (x1 - x0) * k / 4
        px, _ = xy(x, y0)
        draw.text((px - 10, h - bottom + 4), f"{x:.0f}", fill="black", font=_font())
    draw.text((w // 2 - 20, h - bottom + 18), "step", fill="black", font=_font())
    for pts, color, width, markers in series:
        coords = [xy(s, v) for s, v in pts]
        if len(coords) > 1:
            draw.line(coords, fill=color, width=width)
        if markers:
            for cx, cy in coords:
                draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=color)
    for i, r in enumerate(records):  # legend
        color = PALETTE[i % len(PALETTE)]
        lx = left + (i % 3) * 280
        ly = h - 30 + (i // 3) * 12 - 8
        draw.line([(lx, ly + 5), (lx + 20, ly + 5)], fill=color, width=3)
        draw.text((lx + 26, ly), f"{r.name[:30]} (thin: training, dots: eval)", fill="black", font=_font())
    return _png(img)


def sample_grid_png(records: list[RunRecord], cell: int = 160) -> tuple[bytes, dict[str, Any]]:
    """Rows = runs, columns = the steps any run sampled at: the first prompt's first image, same seed."""
    from PIL import Image, ImageDraw

    prompt = next((s.get("prompt") for r in records for s in r.samples), None)
    steps = sorted(
        {int(s["step"]) for r in records for s in r.samples if s.get("prompt") == prompt and "step" in s}
    )
    label_w, header = 180, 24
    img = Image.new("RGB", (label_w + cell * max(1, len(steps)), header + cell * len(records)), "white")
    draw = ImageDraw.Draw(img)
    for c, step in enumerate(steps):
        draw.text((label_w + c * cell + 4, 6), f"step {step}", fill="black", font=_font())
    for row, r in enumerate(records):
        y = header + row * cell
        draw.text((4, y + cell // 2 - 6), r.name[:28], fill="black", font=_font())
        by_step = {
            int(s["step"]): s
            for s in r.samples
            if s.get("prompt") == prompt and int(s.get("index", 0)) == 0 and "step" in s
        }
        for c, step in enumerate(steps):
            s = by_step.get(step)
            file = (r.path / str(s.get("file", ""))).resolve() if s else None
            # Only files inside the run folder: an index entry is data, not a path to trust.
            if file is None or not file.is_relative_to(r.path.resolve()) or not file.is_file():
                draw.rectangle(
                    [label_w + c * cell + 2, y + 2, label_w + (c + 1) * cell - 2, y + cell - 2],
                    outline=(200, 200, 200),
                )
                continue
            try:
                with Image.open(file) as im:
                    scale = (cell - 4) / max(im.size)  # up or down: small demo samples stay visible
                    thumb = im.convert("RGB").resize(
                        (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
                    )
            except OSError:
                continue
            img.paste(thumb, (label_w + c * cell + 2, y + 2))
    return _png(img), {"prompt": prompt, "steps": steps, "rows": [r.name for r in records], "cell": cell}


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# -------------------------------------------------------------------------------------------- reports
COLUMNS = [
    ("final_eval_loss", "final eval loss", "{:.5f}"),
    ("best_eval_loss", "best eval loss", "{:.5f}"),
    ("final_train_loss", "final train loss", "{:.4f}"),
    ("sec_per_step", "s/step", "{:.3f}"),
    ("wall_s", "wall s", "{:.0f}"),
    ("gpu_peak_gib_measured", "GPU peak GiB", "{:.2f}"),
    ("gpu_peak_gib_estimated", "GPU est GiB", "{:.2f}"),
    ("host_peak_gib_measured", "host peak GiB", "{:.2f}"),
    ("host_peak_gib_estimated", "host est GiB", "{:.2f}"),
    ("lora_bytes", "LoRA MB", "{:.1f}"),
]


def cell(key: str, value: Any, fmt: str) -> str:
    """One figure as the table shows it (— when the run has none)."""
    if value is None:
        return "—"
    if key == "lora_bytes":
        value = value / 1e6
    return fmt.format(value)


def table_text(result: dict[str, Any]) -> str:
    rows = [["run", "state", *[title for _, title, _ in COLUMNS]]]
    for s in result["runs"]:
        rows.append(
            [escape(Path(s["run"]).name), str(s["state"]), *[cell(k, s.get(k), f) for k, _, f in COLUMNS]]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    diff = result["differing_fields"]
    if diff:
        lines.append("")
        lines.append("settings that differ:")
        for k, values in diff.items():
            lines.append(f"  {k}: " + " | ".join(escape(repr(v)) for v in values))
    else:
        lines.append("\nno setting differs (besides output.dir)")
    return "\n".join(lines)


def html_report(result: dict[str, Any], curves: bytes, grid: bytes | None) -> str:
    def img(data: bytes) -> str:
        return f'<img alt="" src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    head = "".join(f"<th>{html.escape(t)}</th>" for t in ["run", "state", *[t for _, t, _ in COLUMNS]])
    body = "".join(
        "<tr>"
        + f"<td>{html.escape(Path(s['run']).name)}</td><td>{html.escape(str(s['state']))}</td>"
        + "".join(f"<td>{cell(k, s.get(k), f)}</td>" for k, _, f in COLUMNS)
        + "</tr>"
        for s in result["runs"]
    )
    diff = "".join(
        f"<tr><td>{html.escape(k)}</td>" + "".join(f"<td>{html.escape(repr(v))}</td>" for v in vals) + "</tr>"
        for k, vals in result["differing_fields"].items()
    )
    return (
        "<!doctype html><meta charset='utf-8'><title>flux2-lora compare</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;border-bottom:1px solid #ddd}</style>"
        f"<h2>Runs</h2><table><tr>{head}</tr>{body}</table>"
        f"<h2>Settings that differ</h2><table>{diff or '<tr><td>none</td></tr>'}</table>"
        f"<h2>Loss</h2>{img(curves)}" + (f"<h2>Samples</h2>{img(grid)}" if grid else "")
    )


def write_outputs(
    paths: list[str | Path],
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
