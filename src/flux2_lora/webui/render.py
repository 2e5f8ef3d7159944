"""What the page shows, rendered from action results (pure: no Gradio, no torch).

HTML carries data-* attributes (estimate revision, run state and step) so tests and scripts read the
page without parsing prose. Everything from a request or a run directory is escaped.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from typing import Any

from flux2_lora.webui.schema import form_fields, human_number

VERDICT_TEXT = {"fits": "fits", "tight": "tight", "does_not_fit": "does not fit", None: "unknown"}
LABELS = {s.path: s.label for s in form_fields()}
# Trainer and CLI wording → what the page offers instead.
_UI_WORDS = (
    (re.compile(r"resume with --resume latest"), "press Resume to continue"),
    (re.compile(r"resume from the last checkpoint"), "press Resume to continue from the last checkpoint"),
    (re.compile(r"\(details in [^)]*\)"), "(details in the log below)"),
)


def esc(text: Any) -> str:
    return html.escape(str(text if text is not None else ""))


def ui_words(message: str) -> str:
    for pattern, repl in _UI_WORDS:
        message = pattern.sub(repl, message)
    return message


def digest(config: Any) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]


def gib(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f} GiB" if v >= 0.95 else f"{v * 1024:.0f} MiB"


def field_name(path: str) -> str:
    return f"{LABELS[path]} ({path})" if path in LABELS else (path or "config")


def errors_markdown(errors: list[dict[str, str]]) -> str:
    if not errors:
        return ""
    lines = ["**Fix these fields:**"]
    lines += [f"- ✘ **{field_name(e['field'])}**: {e['message']}" for e in errors]
    return "\n".join(lines)


def _host_line(host: dict[str, Any], where: str) -> str:
    avail = host.get("available_gib")
    verdict = VERDICT_TEXT.get(host.get("verdict"), "?")
    of = f" of {avail:.1f} GiB available" if avail else ""
    n = int(host.get("processes") or 1)
    each = f" per process × {n} = {gib(host.get('machine_peak_gib'))}" if n > 1 else ""
    return f"{where}: host RAM peak {gib(host.get('peak_gib'))}{each}{of} ({verdict})"


def verdict_html(result: dict[str, Any], rev: str, field_errors: dict[str, str] | None = None) -> str:
    """The estimate panel head: verdict colour on the chosen GPU; data-rev lets tests see each update,
    data-errors carries the field errors the page shows at their widgets (widgets.PAGE_JS)."""
    attrs = f'data-rev="{rev}" data-errors="{esc(json.dumps(field_errors or {}))}"'
    if not result.get("available"):
        msg = esc(result.get("message", "estimate unavailable"))
        unknown = not (result.get("model") or {}).get("ok", True)
        cls = "unknown" if unknown else ("error" if result.get("errors") else "unavailable")
        return f'<div id="estimate-verdict" class="verdict {cls}" {attrs} data-verdict="{cls}">{msg}</div>'
    r = result["report"]
    host = r.get("host") or {}
    model = (result.get("model") or {}).get("title", "")
    if host.get("device") == "cpu":
        verdict = host.get("verdict") or "unknown"
        head = (
            f"CPU training: {VERDICT_TEXT.get(verdict, verdict)} — host RAM peak {gib(host.get('peak_gib'))}"
        )
        sub = f"{esc(model)} · trainable {r.get('trainable_params', 0):,} parameters"
        if host.get("available_gib"):
            sub += f" · {host['available_gib']:.1f} GiB available"
    else:
        gpu = r.get("gpu") or {}
        verdict = gpu.get("verdict", "unknown")
        n = int(r.get("num_gpus") or 1)
        # Several processes: every figure is one GPU's, and the verdict is for n of them.
        where = (
            f"per GPU, {esc(gpu.get('label') or gpu.get('name', 'GPU'))}"
            if n > 1
            else esc(gpu.get("name", "GPU"))
        )
        head = (
            f"{where}: {VERDICT_TEXT.get(verdict, verdict)} — "
            f"{gib(r.get('total_gib'))} of {gpu.get('gib', 0):.0f} GiB"
        )
        if n > 1:
            how = (
                "FSDP shards the model over them"
                if r.get("strategy") == "fsdp"
                else "DDP: a whole copy on each"
            )
            head += f' <span class="verdict-gpus" data-gpus="{n}">({n} GPUs; {how})</span>'

        sub = (
            f"{esc(model)} · peak allocated {gib(r.get('allocated_peak_gib'))} while {esc(r.get('peak_phase', '?'))}"
            f" · trainable {r.get('trainable_params', 0):,} parameters<br>"
            + esc(_host_line(host, "On that GPU's machine"))
        )
    here = r.get("here")
    if here:
        sub += "<br>" + esc(
            _host_line(here["host"], "Start on this machine trains on its CPU (no GPU found)")
        )
    return (
        f'<div id="estimate-verdict" class="verdict {verdict}" {attrs} data-verdict="{verdict}">'
        f'<div class="verdict-head">{head}</div><div class="verdict-sub">{sub}</div></div>'
    )


def warnings_html(warnings: list[dict[str, Any]]) -> str:
    if not warnings:
        return '<div id="estimate-warnings" data-count="0"></div>'
    items = []
    for w in warnings:
        fix = f'<div class="warning-fix">Fix: {esc(w["fix"])}</div>' if w.get("fix") else ""
        items.append(
            f'<li data-field="{esc(w["field"])}"><b>{esc(field_name(w["field"]))}</b>: '
            f"{esc(ui_words(w['message']))}{fix}</li>"
        )
    return f'<div id="estimate-warnings" data-count="{len(warnings)}"><b>⚠ Check</b><ul>{"".join(items)}</ul></div>'


def breakdown_markdown(result: dict[str, Any]) -> str:
    if not result.get("available"):
        return ""
    r = result["report"]
    lines = ["| GPU memory at the peak | GiB |", "|---|---:|"]
    lines += [f"| {k.replace('_', ' ')} | {v:.2f} |" for k, v in (r.get("components") or {}).items() if v]
    lines += [f"| **total** | **{r.get('total_gib', 0):.2f}** |"]
    phases = r.get("phases") or {}
    if phases:
        lines += ["", "| phase (tensors) | GiB |", "|---|---:|"] + [
            f"| {k} | {v:.2f} |" for k, v in phases.items()
        ]
    host = r.get("host") or {}
    if host.get("phases"):
        lines += [
            "",
            f"| host RAM ({'CPU' if host.get('device') == 'cpu' else 'GPU'} run) | GiB |",
            "|---|---:|",
        ]
        lines += [f"| {k} | {v:.2f} |" for k, v in host["phases"].items()]
    gpus = r.get("gpus") or []
    if gpus:
        per = " (per GPU)" if int(r.get("num_gpus") or 1) > 1 else ""
        lines += ["", f"| GPUs | GiB{per} | verdict |", "|---|---:|---|"]
        lines += [
            f"| {g.get('label') or g['name']} | {g['gib']:.0f} | {VERDICT_TEXT.get(g['verdict'], g['verdict'])} |"
            for g in gpus
        ]
    notes = r.get("notes") or []
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines)


def recommendation_label(rec: dict[str, Any]) -> str:
    after = rec.get("verdict_after") or ("fits" if rec.get("fits_after") else "does_not_fit")
    fits = {"fits": " → fits", "tight": " → fits, tight"}.get(after, " (still does not fit)")
    return f"Apply: {rec.get('title', '?')} (−{rec.get('saves_gib', 0):.1f} GiB{fits})"


def warning_fix_label(w: dict[str, Any]) -> str:
    return f"Fix {LABELS.get(w['field'], w['field'])}: {w.get('fix', '')}"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return human_number(v)
    if isinstance(v, list):
        return ", ".join(map(str, v)) or "(none)"
    return str(v) if v not in (None, "") else "(empty)"


def preset_markdown(r: dict[str, Any], name: str) -> str:
    """What a preset changed, field by field (nothing hidden)."""
    if not r.get("ok"):
        return errors_markdown(r.get("errors") or [])
    changes = r.get("changes") or []
    how = {
        "model": "on top of your settings",
        "demo": "from the defaults",
    }.get(r.get("kind", ""), "from the defaults, keeping your model, dataset, output folder and prompts")
    head = f"**Preset {esc(name)}** ({how}): {esc(r.get('description', ''))}"
    if not changes:
        return head + "\n\nNothing changed: the form already had these values."
    rows = [
        f"| {esc(field_name(c['field']))} | {esc(_value(c['old']))} | {esc(_value(c['new']))} |"
        for c in changes
    ]
    return "\n".join([head, "", "| field | was | now |", "|---|---|---|", *rows])


def dataset_markdown(r: dict[str, Any]) -> str:
    if "report" not in r:
        return f"✘ {esc(r.get('message', 'dataset check failed'))}"
    rep = r["report"]
    head = "✔" if r["ok"] else "✘"
    lines = [
        f"{head} **{rep['num_items']}** usable of {rep['num_images_found']} images · {rep['num_captions']} "
        f"captions · {rep['num_missing_captions']} missing · {rep['num_unused_captions']} unused"
    ]
    # One line per distinct problem, with the files it concerns (12 images of one size: one line).
    grouped: dict[tuple[str, str], list[str]] = {}
    for f, ps in rep["problems"].items():
        for p in ps:
            grouped.setdefault((p["severity"], p["message"]), []).append(f)
    for (severity, message), files in list(grouped.items())[:20]:
        named = ", ".join(f"`{esc(f)}`" for f in files[:3]) + (
            f" and {len(files) - 3} more" if len(files) > 3 else ""
        )
        lines.append(f"- {severity}: {named} {esc(message)}")
    if len(grouped) > 20:
        lines.append(f"- … and {len(grouped) - 20} more problems")
    lines += [
        f"- trigger {t['severity']}: {esc(t['file']) + ': ' if t['file'] else ''}{esc(t['message'])}"
        for t in r.get("trigger", [])
    ]
    if r.get("bucket_text"):
        lines += ["", "```", r["bucket_text"], "```"]
    for e in r.get("entries", []):  # each dataset.extra entry (data/check.py)
        lines.append(entry_markdown(e))
    return "\n".join(lines)


def entry_markdown(e: dict[str, Any]) -> str:
    """One dataset.extra entry of the dataset check: its counts, role and masks, or why it failed."""
    head = f"**{esc(e['entry'])}** ({esc(e.get('role', ''))})"
    if "error" in e:
        return f"\n✘ {head}: {esc(e['error'])}"
    mark = "✔" if e["num_images"] else "✘"
    text = (
        f"\n{mark} {head} `{esc(e['path'])}` · weight {e['weight']:g} · {e['resolution']} px · "
        f"**{e['num_images']}** usable of {e['num_images_found']} images · {e['num_missing_captions']} "
        f"captions missing · {e['num_errors']} errors · {e['num_warnings']} warnings"
    )
    m = e.get("masks")
    if m:
        text += f" · masks: {m['with_mask']} of {m['images']} images"
    return text


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def status_html(snap: dict[str, Any], runs_listed: int | None = None) -> str:
    """Run status; data-state/data-step let tests and scripts read it. ``runs_listed``: how many runs the
    folder holds, said while none is followed."""
    state = snap.get("state") or "none"
    pre = snap.get("preflight") or {}
    if not snap.get("ok", True) or state == "none":
        if pre.get("running"):
            text = "Pre-flight running…"
        elif runs_listed:
            n = f"{runs_listed} run{'s' * (runs_listed != 1)}"
            text = f"{n} in the runs folder: pick one above, or click its row in All runs below."
        else:
            text = "No run yet. Start one from the Train tab."
        return f'<div id="run-status-text" data-state="none" data-step="0">{text}</div>'
    step, total = snap.get("step") or 0, snap.get("total_steps") or 0
    pct = f" ({100 * step / total:.0f}%)" if total else ""
    eta = snap.get("eta_seconds")
    parts = [f"<b>{esc(state)}</b>"] + ([f"step {step}/{total}{pct}"] if total else [])
    if eta is not None and not snap.get("final"):
        parts.append(f"ETA {_duration(eta)}")
    if snap.get("seconds_per_step"):
        parts.append(f"{snap['seconds_per_step']:.2f} s/step")
    lines = [" · ".join(parts)]
    if snap.get("message"):
        lines.append(esc(ui_words(snap["message"])))
    if snap.get("error"):
        lines.append("✘ " + esc(snap["error"]))
    if total:
        lines.append(f'<progress max="{total}" value="{step}" style="width:100%"></progress>')
    return (
        f'<div id="run-status-text" data-state="{esc(state)}" data-step="{step}">{"<br>".join(lines)}</div>'
    )


def log_html(log: str) -> str:
    """The log tail; the newest line is last and marked, and widgets.CSS keeps it in view."""
    lines = log.splitlines() or ["(no log yet)"]
    body = "\n".join(esc(ln) for ln in lines[:-1])
    last = f'<span class="log-last">{esc(lines[-1])}</span>'
    return f'<pre class="log-text" data-lines="{len(lines)}">{body}{chr(10) if body else ""}{last}</pre>'


def preflight_html(pre: dict[str, Any]) -> str:
    """Pre-flight progress while it runs, then measured against estimated."""
    if pre.get("running"):
        last = [ln for ln in (pre.get("output") or "").splitlines() if ln.strip()][-1:]
        now = esc(last[0][-200:]) if last else "starting"
        return (
            '<div id="preflight-result" data-state="running"><b>Pre-flight running</b> (loads the model, '
            f'times {10} steps): <code>{now}</code><progress style="width:100%"></progress></div>'
        )
    r = pre.get("result")
    if not r:
        if pre.get("stopped"):
            return '<div id="preflight-result" data-state="stopped">Pre-flight stopped.</div>'
        out = (pre.get("output") or "").strip()
        if out:
            return f'<div id="preflight-result" data-state="failed"><b>Pre-flight failed</b><pre>{esc(out[-1500:])}</pre></div>'
        return '<div id="preflight-result" data-state="none"></div>'
    m, est = r.get("measured") or {}, r.get("estimate") or {}
    rows = [
        ("GPU peak allocated", gib(m.get("gpu_allocated_peak_gib")), gib(est.get("allocated_peak_gib"))),
        ("GPU reserved (≈ nvidia-smi)", gib(m.get("gpu_reserved_peak_gib")), gib(est.get("total_gib"))),
        ("host RAM peak", gib(m.get("host_peak_rss_gib")), gib(est.get("host_peak_gib"))),
    ]
    table = "".join(f"<tr><td>{a}</td><td>{b}</td><td>{c}</td></tr>" for a, b, c in rows)
    eta = r.get("eta_s") or 0
    return (
        '<div id="preflight-result" data-state="done">'
        f"<b>Pre-flight</b> on {esc(r.get('device', '?'))} ({esc(r.get('dtype', '?'))}): "
        f"{r.get('seconds_per_step', 0):.3f} s/step · load + cache {r.get('load_and_cache_s', 0):.1f} s · "
        f"full run of {r.get('max_steps', '?')} steps ≈ {_duration(eta)}"
        f"<table><tr><th></th><th>measured</th><th>estimated</th></tr>{table}</table></div>"
    )
