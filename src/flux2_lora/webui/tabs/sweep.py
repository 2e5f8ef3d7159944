"""The Sweep tab: config fields to vary (from the schema), values or a range each, the method and the trial
count; the plan (trial count, the largest trial's memory) as the form changes; Launch runs
``flux2-lora sweep`` as a subprocess and a timer shows its trials and the best so far."""

from __future__ import annotations

from typing import Any

import gradio as gr

from flux2_lora.config.io import load_yaml_text
from flux2_lora.webui import configs, render
from flux2_lora.webui.sweeps import optuna_missing
from flux2_lora.webui.tabs import PRIVATE, Shared, skip

MAX_PARAMS = 4
MAX_VALUE_CHARS = 4000
TABLE = ["#", "state", "value", "parameters", "objective", "reason", "run"]
SHORT_OBJECTIVE = {"train_loss (no eval loss in this run)": "train loss (no eval)", "eval_loss": "eval loss"}


def parse_values(text: str) -> list[Any]:
    """'16, 32' → [16, 32]; 'adamw, prodigy' → ['adamw', 'prodigy']; each item read as a YAML scalar."""
    out: list[Any] = []
    for part in str(text or "")[:MAX_VALUE_CHARS].split(","):
        item = part.strip()
        if not item:
            continue
        value, problems = load_yaml_text(item)
        if isinstance(value, str) and _number(value) is not None:
            value = _number(value)  # YAML 1.1 reads 2e-5 (no dot) as text
        out.append(value if not problems and isinstance(value, (bool, int, float, str)) else item)
    return out


def parse_set(text: str) -> tuple[dict[str, Any], list[str]]:
    """'section.key=value' lines → {path: value} (values read as YAML scalars); bad lines by number."""
    out: dict[str, Any] = {}
    bad: list[str] = []
    for n, line in enumerate(str(text or "")[:MAX_VALUE_CHARS].splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, raw = line.partition("=")
        if not sep or not key.strip():
            bad.append(f"line {n}: write section.key=value")
            continue
        value, problems = load_yaml_text(raw.strip()) if raw.strip() else ("", [])
        ok = not problems and isinstance(value, (bool, int, float, str, list))
        out[key.strip()] = value if ok else raw.strip()
    return out, bad


def _number(v: Any) -> float | None:
    try:
        f = float(str(v).strip()[:64])
    except (TypeError, ValueError):
        return None
    return f if f == f and abs(f) != float("inf") else None


def spec_from_form(
    presets: list[str],
    template: str | None,
    set_text: str,
    rows: list[tuple[Any, Any, Any, Any, Any]],
    method: str,
    trials: Any,
    objective: str,
    prune: bool,
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The spec the form describes, and the form's own errors (the plan checks the rest)."""
    errors: list[dict[str, str]] = []
    values, bad = parse_set(set_text)
    errors += [{"field": "set", "message": b} for b in bad]
    base: dict[str, Any] = {"presets": list(presets or []), "set": values}
    if template:
        base["template"] = template
    params: dict[str, Any] = {}
    for i, (path, text, low, high, log) in enumerate(rows, start=1):
        if not path:
            continue
        lo, hi = _number(low), _number(high)
        if str(text or "").strip():
            params[path] = {"values": parse_values(text)}
        elif lo is not None and hi is not None:
            params[path] = {"low": lo, "high": hi, "log": bool(log)}
        elif str(low or "").strip() or str(high or "").strip():
            errors.append(
                {"field": f"parameter {i}", "message": f"{path}: low and high must both be numbers"}
            )
        else:
            errors.append(
                {"field": f"parameter {i}", "message": f"{path}: enter values, or a low and a high"}
            )
    spec: dict[str, Any] = {
        "base": base,
        "parameters": params,
        "method": method or "grid",
        "objective": objective or "eval_loss",
        "pruning": {"enabled": bool(prune)},
    }
    if trials:
        spec["trials"] = int(trials)
    return spec, errors


def plan_html(plan: dict[str, Any], form_errors: list[dict[str, str]]) -> str:
    """The trial count and the largest trial's memory; data-trials / data-verdict for tests and scripts."""
    errors = form_errors + list(plan.get("errors") or [])
    if errors:
        items = "".join(
            f"<li><b>{render.esc(e['field'])}</b>: {render.esc(e['message'])}</li>" for e in errors
        )
        return f'<div id="sweep-plan-text" data-trials="0" data-verdict="error"><ul>{items}</ul></div>'
    n = plan.get("trials", 0)
    grid = f" (grid of {plan['grid_size']})" if plan.get("method") == "grid" and plan.get("grid_size") else ""
    big = plan.get("largest") or {}
    verdict = str(big.get("verdict", "unknown"))
    lines = [f"<b>{n} trial{'s' * (n != 1)}</b>{grid}, {render.esc(plan.get('method', ''))}"]
    if big:
        params = ", ".join(f"{k}={v}" for k, v in (big.get("params") or {}).items())
        lines.append(
            f"largest trial ({render.esc(params)}): <b>{big['gib']:.2f} GiB</b> on {render.esc(big['target'])}: "
            f"{render.esc(verdict.replace('_', ' '))}"
        )
        if not big.get("fits"):
            lines.append(f"✘ {render.esc(big.get('reason', ''))}: such trials are pruned, not run")
    if plan.get("cannot_start"):
        lines.append(f"Launch is disabled: {render.esc(plan['cannot_start'])}")
    return (
        f'<div id="sweep-plan-text" class="verdict {render.esc(verdict)}" data-trials="{n}" '
        f'data-verdict="{render.esc(verdict)}">{"<br>".join(lines)}</div>'
    )


def best_html(status: dict[str, Any]) -> str:
    best = status.get("best")
    counts = status.get("counts") or {}
    running = "running" if status.get("running") else "not running"
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no trials yet"
    head = (
        f"{render.esc(status.get('study', ''))}: {status.get('counted', 0)}/{status.get('budget') or '?'} trials "
        f"({render.esc(summary)}), {running}"
    )
    if not status.get("ok"):
        return f'<div id="sweep-best-text" data-best="">{render.esc(status.get("message", ""))}</div>'
    if not best:
        return f'<div id="sweep-best-text" data-best="">{head}<br>best so far: none yet</div>'
    params = ", ".join(f"{k}={v}" for k, v in best["params"].items())
    where = f"<br>best config: {render.esc(best['file'])}" if best.get("file") else ""
    return (
        f'<div id="sweep-best-text" data-best="{best["number"]}">{head}<br>best so far: <b>trial '
        f"{best['number']}</b>, {render.esc(best['objective'])} {best['value']:.6g} ({render.esc(params)}){where}</div>"
    )


def table_rows(status: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for t in status.get("trials") or []:
        params = ", ".join(f"{k}={v}" for k, v in t["params"].items())
        value = f"{t['value']:.6g}" if t.get("value") is not None else ""
        run = (t.get("run_dir") or "").rsplit("/", 1)[-1]
        step = f" {t['step']}/{t['total_steps']}" if t["state"] == "running" and t.get("total_steps") else ""
        objective = SHORT_OBJECTIVE.get(t.get("objective") or "", t.get("objective") or "")
        rows.append([t["number"], t["state"] + step, value, params, objective, t.get("reason") or "", run])
    return rows


def create_sweep_tab(shared: Shared, tab: gr.Tab) -> dict[str, Any]:
    acts = shared.actions
    missing = optuna_missing()
    fields = acts.sweep_fields()
    kinds = {f["path"]: f for f in fields}
    choices = [(f"{f['path']} ({f['kind']})", f["path"]) for f in fields]
    c: dict[str, Any] = {"tab": tab}
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, elem_id="sweep-form"):
            gr.Markdown(
                "Vary config fields over a base configuration. Every trial is an ordinary run in "
                "`<runs>/<name>/trial-NNNN`; the study lives in `<name>/study.db`, so launching the same "
                "name again continues it. Same as `flux2-lora sweep SPEC.yaml --dir DIR`."
            )
            with gr.Row():
                c["name"] = gr.Textbox(
                    "sweep-1", label="Sweep name", info="its folder in the runs folder", elem_id="sweep-name"
                )
                c["pick"] = gr.Dropdown(
                    acts.list_sweeps(), value=None, label="Open a sweep", elem_id="sweep-pick"
                )
            with gr.Accordion("Base configuration", open=True):
                c["presets"] = gr.Dropdown(
                    [p["name"] for p in acts.presets()],
                    value=["quickstart"],
                    multiselect=True,
                    label="Presets, in order",
                    elem_id="sweep-presets",
                )
                c["template"] = gr.Dropdown(
                    acts.list_templates(),
                    value=None,
                    label="Saved template (after the presets)",
                    elem_id="sweep-template",
                )
                c["set"] = gr.Textbox(
                    "",
                    lines=3,
                    label="Set (one section.key=value per line, last)",
                    placeholder="dataset.path=./photos\ntraining.max_steps=400",
                    elem_id="sweep-set",
                )
            c["rows"] = []
            for i in range(MAX_PARAMS):
                with gr.Row(elem_id=f"sweep-param-{i}"):
                    field = gr.Dropdown(
                        choices,
                        value=None,
                        label=f"Parameter {i + 1}",
                        filterable=True,
                        scale=5,
                        # Room for the longest path ("training.gradient_accumulation_steps (int)"); the
                        # row wraps its range boxes under it where the column is narrower.
                        min_width=400,
                        elem_id=f"sweep-field-{i}",
                    )
                    values = gr.Textbox(
                        label="Values (comma-separated)", scale=3, min_width=200, elem_id=f"sweep-values-{i}"
                    )
                    # Text, not number boxes: empty means "no range", and 2e-5 stays as typed.
                    low = gr.Textbox(label="…or low", placeholder="2e-5", scale=1, elem_id=f"sweep-low-{i}")
                    high = gr.Textbox(label="high", placeholder="2e-4", scale=1, elem_id=f"sweep-high-{i}")
                    log = gr.Checkbox(False, label="log scale", scale=1, elem_id=f"sweep-log-{i}")
                c["rows"].append((field, values, low, high, log))
            with gr.Row():
                c["method"] = gr.Radio(
                    ["grid", "random", "tpe"], value="grid", label="Method", elem_id="sweep-method"
                )
                c["trials"] = gr.Number(
                    0, precision=0, label="Trials (0: the whole grid)", elem_id="sweep-trials"
                )
                c["objective"] = gr.Dropdown(
                    ["eval_loss", "train_loss"],
                    value="eval_loss",
                    label="Objective",
                    info="eval_loss: the final held-out eval loss; a run without one is ranked by its final training loss (the table says which)",
                    elem_id="sweep-objective",
                )
                c["prune"] = gr.Checkbox(False, label="Prune poor trials on eval loss", elem_id="sweep-prune")
        with gr.Column(scale=2, elem_id="sweep-side"):
            gpus = configs.gpu_choices()
            c["gpu"] = gr.Dropdown(
                [("this machine (local GPU, else RAM)", ""), *[(g, g) for g in gpus]],
                value="",
                label="Vet trials against",
                elem_id="sweep-gpu",
            )
            c["plan"] = gr.HTML(plan_html({"trials": 0}, []), elem_id="sweep-plan")
            with gr.Row():
                c["start"] = gr.Button(
                    "Launch sweep", variant="primary", interactive=missing is None, elem_id="sweep-start"
                )
                c["stop"] = gr.Button("Stop", variant="stop", interactive=False, elem_id="sweep-stop")
            c["msg"] = gr.Markdown(
                f"Launch is disabled: {missing}" if missing else "", elem_id="sweep-message"
            )
            c["best"] = gr.HTML(elem_id="sweep-best")
    # The trials under both columns, at the page's full width: its seven columns do not fit the side one.
    c["table"] = gr.Dataframe(
        headers=TABLE, interactive=False, wrap=True, label="Trials", elem_id="sweep-table"
    )
    with gr.Accordion("Sweep output", open=False):
        c["log"] = gr.Textbox(lines=10, max_lines=10, autoscroll=True, show_label=False, elem_id="sweep-log")
    _wire(shared, c, kinds)
    return c


def _wire(shared: Shared, c: dict[str, Any], kinds: dict[str, dict[str, Any]]) -> None:
    acts = shared.actions
    current, last_sig = gr.State(""), gr.State(None)
    row_inputs = [w for row in c["rows"] for w in row]
    form = [
        c["presets"],
        c["template"],
        c["set"],
        *row_inputs,
        c["method"],
        c["trials"],
        c["objective"],
        c["prune"],
    ]

    def spec_of(data: dict[Any, Any]) -> tuple[dict[str, Any], list[dict[str, str]]]:
        rows = [tuple(data[w] for w in row) for row in c["rows"]]
        return spec_from_form(
            data[c["presets"]], data[c["template"]], data[c["set"]], rows,
            data[c["method"]], data[c["trials"]], data[c["objective"]], data[c["prune"]],
        )  # fmt: skip

    def on_plan(data: dict[Any, Any]) -> str:
        spec, errors = spec_of(data)
        if not spec["parameters"] and not errors:
            return plan_html(
                {"trials": 0, "errors": [{"field": "parameters", "message": "pick a field to vary"}]}, []
            )
        return plan_html(acts.sweep_plan(spec, data[c["gpu"]] or ""), errors)

    gr.on(
        [w.change for w in [*form, c["gpu"]]] + [c["tab"].select],
        on_plan,
        inputs={*form, c["gpu"]},
        outputs=c["plan"],
        trigger_mode="always_last",
        show_progress="hidden",
        **PRIVATE,
    )

    # Picking a field fills its values with a starting point: every choice, or the default.
    def prefill(path: str | None, text: str) -> Any:
        f = kinds.get(path or "")
        if f is None or str(text or "").strip():
            return gr.skip()
        if f["kind"] == "choice":
            return ", ".join(map(str, f["choices"]))
        if f["kind"] == "bool":
            return "true, false"
        return str(f["default"])

    for field, values, *_ in c["rows"]:
        field.input(prefill, [field, values], values, **PRIVATE)

    def on_start(data: dict[Any, Any]) -> dict[Any, Any]:
        spec, errors = spec_of(data)
        if errors:
            return {c["msg"]: render.errors_markdown(errors)}
        r = acts.start_sweep(spec, data[c["name"]] or "", data[c["gpu"]] or "")
        if not r["ok"]:
            return {c["msg"]: render.errors_markdown(r["errors"])}
        return {
            c["msg"]: f"Launched `{render.esc(r['name'])}`: {r['trials']} trials",
            current: r["name"],
            last_sig: None,
            c["pick"]: gr.update(choices=acts.list_sweeps(), value=r["name"]),
        }

    c["start"].click(
        on_start, {*form, c["name"], c["gpu"]}, [c["msg"], current, last_sig, c["pick"]], **PRIVATE
    )

    def on_pick(name: str | None) -> Any:
        # Gradio may send an empty value when the choices change under the open list: keep the sweep.
        return (name, None, name) if name else (gr.skip(), gr.skip(), gr.skip())

    c["pick"].input(on_pick, c["pick"], [current, last_sig, c["name"]], **PRIVATE)
    c["pick"].focus(lambda: gr.update(choices=acts.list_sweeps()), None, c["pick"], **PRIVATE)
    c["template"].focus(lambda: gr.update(choices=acts.list_templates()), None, c["template"], **PRIVATE)

    def on_stop(name: str) -> str:
        return render.esc(acts.stop_sweep(name or "")["message"])

    c["stop"].click(on_stop, current, c["msg"], **PRIVATE)

    outputs = [c["table"], c["best"], c["log"], c["stop"], last_sig]

    def tick(name: str, sig0: Any) -> dict[Any, Any]:
        if not name:
            return skip(outputs)
        s = acts.sweep_status(name)
        rows = table_rows(s)
        sig = [rows, s.get("running"), (s.get("output") or "")[-200:], (s.get("best") or {}).get("number")]
        if sig == sig0:
            return skip(outputs)
        return {
            c["table"]: rows,
            c["best"]: best_html(s),
            c["log"]: s.get("output") or s.get("message", ""),
            c["stop"]: gr.update(interactive=bool(s.get("running"))),
            last_sig: sig,
        }

    shared.timer("sweep").tick(tick, [current, last_sig], outputs, show_progress="hidden", **PRIVATE)
