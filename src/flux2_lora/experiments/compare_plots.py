"""The pictures of a comparison (PIL, no torch): the runs' loss curves overlaid, with a legend that names
every run in a colour of its own, and a grid of their samples (rows: runs, columns: steps)."""

from __future__ import annotations

import colorsys
import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flux2_lora.experiments.compare import RunRecord

RGB = tuple[int, int, int]
# Okabe–Ito (colour-blind safe) for the first runs; more runs get colours spread around the hue circle.
PALETTE: list[RGB] = [
    (0, 114, 178),
    (230, 159, 0),
    (0, 158, 115),
    (204, 121, 167),
    (86, 180, 233),
    (213, 94, 0),
    (0, 0, 0),
]
LEGEND_ROW, LEGEND_COL = 14, 220  # pixels per legend entry


def run_colors(n: int) -> list[RGB]:
    """``n`` distinct colours, dark enough to read on white."""
    out = list(PALETTE[:n])
    k = 0
    while len(out) < n:
        hue = (k * 0.618033988749895) % 1.0  # the golden ratio spreads any count of hues evenly
        sat, val = ((0.85, 0.75), (0.55, 0.55), (0.95, 0.45))[k % 3]
        rgb: RGB = tuple(round(c * 255) for c in colorsys.hsv_to_rgb(hue, sat, val))  # type: ignore[assignment]
        if rgb not in out:
            out.append(rgb)
        k += 1
    return out


def hex_color(rgb: RGB) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def series_colors(names: list[str]) -> dict[str, str]:
    """The UI plot's colour per series ("<run> train" in the run's colour, "<run> eval" a darker shade)."""
    colors = run_colors(len(names))
    used, out = set(colors), {}
    for name, (r, g, b) in zip(names, colors):
        shade: RGB = (r * 3 // 5, g * 3 // 5, b * 3 // 5)
        mix = 0.45
        while shade in used:  # black has no darker shade; go towards white instead
            shade = (round(r + (255 - r) * mix), round(g + (255 - g) * mix), round(b + (255 - b) * mix))
            mix = mix * 0.9 + 0.01
        used.add(shade)
        out[f"{name} train"], out[f"{name} eval"] = hex_color((r, g, b)), hex_color(shade)
    return out


def legend_layout(n: int, width: int, left: int) -> list[tuple[int, int]]:
    """Top-left corner of each run's legend entry, relative to the legend's top: as many columns as fit,
    as many rows as it takes (every run is named)."""
    cols = max(1, (width - left) // LEGEND_COL)
    return [(left + (i % cols) * LEGEND_COL, (i // cols) * LEGEND_ROW) for i in range(n)]


def _font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default()


def curves_png(records: list[RunRecord], size: tuple[int, int] = (900, 420)) -> bytes:
    """Training loss (thin) and eval loss (thick, with markers) of every run, one colour per run; the
    legend below grows with the number of runs."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 60, 20, 20, 50
    colors = run_colors(len(records))
    legend = legend_layout(len(records), w, left)
    legend_h = (legend[-1][1] + LEGEND_ROW + 6) if legend else 0
    img = Image.new("RGB", (w, h + legend_h), "white")
    draw = ImageDraw.Draw(img)
    series = []
    for r, color in zip(records, colors):
        series += [(r.train.points, color, 1, False), (r.evals.points, color, 3, True)]
    points = [p for s, *_ in series for p in s]
    if not points:
        draw.text((left, top), "no losses logged", fill="black", font=_font())
    else:
        x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
        y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
        y1 = y1 if y1 > y0 else y0 + 1e-6
        x1 = x1 if x1 > x0 else x0 + 1

        def xy(step: float, loss: float) -> tuple[float, float]:
            return (
                left + (step - x0) / (x1 - x0) * (w - left - right),
                top + (y1 - loss) / (y1 - y0) * (h - top - bottom),
            )

        draw.rectangle([left, top, w - right, h - bottom], outline=(120, 120, 120))
        for k in range(5):
            _, py = xy(x0, y0 + (y1 - y0) * k / 4)
            draw.text((4, py - 6), f"{y0 + (y1 - y0) * k / 4:.4g}", fill="black", font=_font())
        for step in sorted({round(x0 + (x1 - x0) * k / 4) for k in range(5)}):  # steps are whole
            px, _ = xy(step, y0)
            draw.text((px - 10, h - bottom + 4), str(step), fill="black", font=_font())
        draw.text((w // 2 - 20, h - bottom + 18), "step", fill="black", font=_font())
        draw.text((left + 4, 4), "loss (thin lines: training, dots: eval)", fill="black", font=_font())
        for pts, color, width, markers in series:
            coords = [xy(s, v) for s, v in pts]
            if len(coords) > 1:
                draw.line(coords, fill=color, width=width)
            if markers:
                for cx, cy in coords:
                    draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=color)
    for r, color, (lx, ly) in zip(records, colors, legend):
        y = h + ly
        draw.line([(lx, y + 6), (lx + 20, y + 6)], fill=color, width=4)
        draw.text((lx + 26, y), r.name[:28], fill="black", font=_font())
    return _png(img)


def sample_grid_png(records: list[RunRecord], cell: int = 160) -> tuple[bytes, dict[str, Any]]:
    """Rows = runs, columns = the steps any run sampled at: the first prompt's first image, same seed.
    (The sample index entries were checked when read: an int step and index, a text prompt and file.)"""
    from PIL import Image, ImageDraw

    prompt = next((s["prompt"] for r in records for s in r.samples), None)
    steps = sorted({s["step"] for r in records for s in r.samples if s["prompt"] == prompt})
    label_w, header = 180, 24
    img = Image.new("RGB", (label_w + cell * max(1, len(steps)), header + cell * len(records)), "white")
    draw = ImageDraw.Draw(img)
    for c, step in enumerate(steps):
        draw.text((label_w + c * cell + 4, 6), f"step {step}", fill="black", font=_font())
    for row, r in enumerate(records):
        y = header + row * cell
        draw.text((4, y + cell // 2 - 6), r.name[:28], fill="black", font=_font())
        by_step = {s["step"]: s for s in r.samples if s["prompt"] == prompt and s["index"] == 0}
        for c, step in enumerate(steps):
            s = by_step.get(step)
            file = (r.path / s["file"]).resolve() if s else None
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
            except (OSError, ValueError, Image.DecompressionBombError):
                continue
            img.paste(thumb, (label_w + c * cell + 2, y + 2))
    return _png(img), {"prompt": prompt, "steps": steps, "rows": [r.name for r in records], "cell": cell}


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
