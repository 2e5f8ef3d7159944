"""The Train tab: every config field (from the schema) on the left, the live estimate on the right.

The side panel (GPU, verdict, warnings with fixes, Start) is sticky, so the estimate stays in view while
any field is edited. Estimates come back fast; the slower search for fixes that make a run fit follows
in a second event, so the verdict never waits for it.
"""

from __future__ import annotations

import json
from typing import Any

import gradio as gr
import pandas as pd

from flux2_lora.config import mixed_precision
from flux2_lora.webui import configs, edit_view, render
from flux2_lora.webui.direct import PageCalls, estimate_js, field_estimate_js
from flux2_lora.webui.schema import SECTION_TITLES, form_fields, section_docs
from flux2_lora.webui.tabs import PRIVATE, Shared, go_to, skip
from flux2_lora.webui.tabs.autotune import add_autotune, wire_autotune
from flux2_lora.webui.tabs.ops import add_caption, wire_caption
from flux2_lora.webui.widgets import SHOW_FIELD_ERRORS_SOON, Form

MAX_RECS = 4
SETTLE_MS = 250
# What the fixes should be searched for, read in the page once the estimate has been still for SETTLE_MS:
# its revision if it does not fit, "fits" if it does, and the token as it was while a newer estimate is on
# its way. The search runs when the token changes, so a page that fits, or a user still typing, costs no
# round trip: each backend event makes Gradio's frontend update every component's loading status, which
# is most of a change's latency on a 2-core machine (issue 22).
SETTLED_REV = f"""
async (token) => {{
  const panel = () => document.querySelector('#estimate-verdict');
  const r0 = panel()?.dataset.rev || '';
  await new Promise(r => setTimeout(r, {SETTLE_MS}));
  if (!r0 || (panel()?.dataset.rev || '') !== r0) return token;
  return panel()?.dataset.verdict === 'fits' ? 'fits' : r0;
}}
"""
MAX_FIXES = 4
OPEN_SECTIONS = ("model", "dataset", "lora", "training", "memory", "output")
DATASET_KEYS = (
    "path",
    "caption_extension",
    "default_caption",
    "resolution",
    "bucketing",
    "bucket_step",
    "trigger_word",
    "reference_path",
    "reference_max_pixels",
    "mask_path",
    "extra",
)


def create_train_tab(shared: Shared, tab: gr.Tab) -> dict[str, Any]:
    acts = shared.actions
    initial = configs.initial_dict()
    values = {s.path: v for s, v in zip(form_fields(), _values(initial))}
    form = Form()
    c: dict[str, Any] = {"form": form}
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, elem_id="train-form"):
            with gr.Row():
                c["quickstart"] = gr.Button("Demo (quickstart, CPU)", size="sm", elem_id="preset-quickstart")
                c["quickstart_edit"] = gr.Button(
                    "Edit demo (quickstart-edit, CPU)", size="sm", elem_id="preset-quickstart-edit"
                )
                c["model_presets"] = {
                    name: gr.Button(label, size="sm", elem_id=f"preset-{name}")
                    for label, name in configs.MODEL_PRESETS.items()
                }
            with gr.Row():
                c["quick_presets"] = {
                    name: gr.Button(label, size="sm", elem_id=f"preset-{name}")
                    for label, name in configs.QUICK_PRESETS.items()
                }
                c["lora_preset"] = gr.Dropdown(
                    [
                        (p["name"].replace("-", " ").capitalize(), p["name"])
                        for p in acts.presets()
                        if p["kind"] == "lora"
                    ],
                    value=None,
                    label="LoRA preset",
                    elem_id="lora-preset",
                )
                c["stack"] = gr.Checkbox(
                    False,
                    label="Stack presets",
                    info="Off: a quick or LoRA preset starts from the defaults (keeping model, data, output).",
                    elem_id="preset-stack",
                )
            c["preset_msg"] = gr.Markdown(elem_id="preset-message")
            docs = section_docs()
            for section in dict.fromkeys(s.section for s in form_fields()):
                specs = [s for s in form_fields() if s.section == section]
                with gr.Accordion(
                    SECTION_TITLES.get(section, section),
                    open=section in OPEN_SECTIONS,
                    elem_id=f"section-{section}",
                ):
                    gr.Markdown(docs.get(section, ""))
                    for s in specs:
                        if not s.advanced:
                            form.add(s, values[s.path])
                        if s.path == "model.dtype":  # shown, not set: it follows the dtype
                            c["mixed_precision"] = gr.Textbox(
                                mixed_precision(values[s.path]),
                                label="Mixed precision (follows weight precision)",
                                interactive=False,
                                max_lines=1,
                                elem_id="mixed-precision",
                            )
                    if section == "model":
                        c["model_info"] = gr.Markdown(elem_id="model-check")
                    if section == "dataset":
                        c["zip"] = gr.File(
                            label="…or upload a dataset ZIP", file_types=[".zip"], elem_id="dataset-zip"
                        )
                        c["dataset_info"] = gr.Markdown(elem_id="dataset-check")
                        # Edit datasets: the pairs as thumbnails (reference → target), hidden otherwise.
                        c["pairs_info"] = gr.Markdown(elem_id="dataset-pairs-info")
                        c["pairs"] = gr.Gallery(
                            label="Edit pairs (reference → target)", columns=3, height=260,
                            object_fit="contain", visible=False, elem_id="dataset-pairs",
                        )  # fmt: skip
                        c.update(add_autotune())
                        c.update(add_caption())
                    if any(s.advanced for s in specs):
                        with gr.Accordion("Advanced", open=False) as adv:
                            adv.expand(None, js=SHOW_FIELD_ERRORS_SOON, **PRIVATE)
                            for s in specs:
                                if s.advanced:
                                    form.add(s, values[s.path])
            with gr.Accordion("Templates", open=False):
                with gr.Row():
                    c["tpl_name"] = gr.Textbox(label="Template name", elem_id="template-name", scale=2)
                    c["tpl_save"] = gr.Button("Save template", size="sm", elem_id="template-save")
                c["tpl_pick"] = gr.Dropdown(
                    acts.list_templates(), value=None, label="Load template", elem_id="template-pick"
                )
                c["tpl_msg"] = gr.Markdown(elem_id="template-message")
        with gr.Column(scale=2, elem_id="side-panel"):
            gpus = configs.gpu_choices()
            c["gpu"] = gr.Dropdown(gpus, value=gpus[0] if gpus else None, label="GPU", elem_id="gpu-choice")
            c["verdict"] = gr.HTML(
                render.verdict_html({"message": "estimating…"}, ""), elem_id="estimate-panel"
            )
            with gr.Row():
                c["start"] = gr.Button("Start training", variant="primary", elem_id="start-btn")
                c["queue_add"] = gr.Button("Add to queue", elem_id="queue-add-btn")
                c["preflight"] = gr.Button("Pre-flight", elem_id="preflight-btn")
            c["start_anyway"] = gr.Checkbox(
                False,
                label="Start anyway (the GPU class is a guess)",
                info="Starts a run the estimate says does not fit; never one with errors.",
                elem_id="start-anyway",
            )
            c["start_reason"] = gr.Markdown(elem_id="start-reason")
            c["action_msg"] = gr.Markdown(elem_id="action-message")
            c["warnings"] = gr.HTML(render.warnings_html([]), elem_id="warnings-panel")
            c["fix_btns"] = [
                gr.Button(visible=False, size="sm", elem_id=f"fix-{i}") for i in range(MAX_FIXES)
            ]
            c["rec_btns"] = [gr.Button(visible=False, size="sm", elem_id=f"rec-{i}") for i in range(MAX_RECS)]
            c["errors"] = gr.Markdown(elem_id="form-errors")
            with gr.Accordion("Memory breakdown", open=False):
                c["breakdown"] = gr.Markdown(elem_id="estimate-breakdown")
            with gr.Accordion("Timestep density", open=False):
                c["density"] = gr.LinePlot(
                    x="sigma",
                    y="density",
                    title="Density of training noise levels σ",
                    height=220,
                    elem_id="density-plot",
                )
    _wire(shared, c, form)
    return c


def _values(config: dict[str, Any]) -> list[Any]:
    from flux2_lora.webui.schema import values_from_config

    return list(values_from_config(config).values())


def _wire(shared: Shared, c: dict[str, Any], form: Form) -> None:
    acts = shared.actions
    recs_state = gr.State([])
    rec_token = gr.Textbox(visible=False, elem_id="rec-token")
    # The estimate shown: its config and GPU (the fixes that make it fit are searched for them without
    # sending the form's fields again: an event with ~150 inputs costs the page as much as the search) and
    # its warnings' fixes. One State: each output costs every later event a walk of the page's tree.
    estimated = gr.State(None)
    dataset_state = gr.State(None)
    # A hidden checkbox rather than a State: the page's own JS reads it (no round trip per keystroke).
    alpha_linked = gr.Checkbox(True, visible=False, elem_id="alpha-linked")

    # ---- estimate on every change (fast), then the fixes that make it fit ------------------------------
    def on_estimate(data: dict[Any, Any]) -> dict[Any, Any]:
        config = form.config(data)
        # The estimate endpoint's own answer, with the dataset check this page already made.
        r = acts.assess(config, data[c["gpu"]] or "", data[dataset_state], with_recommendations=False)
        # An entry's error (dataset.extra[0].path) shows at its list's widget, naming the entry.
        errors = {
            e["field"].split("[")[0]: (
                e["message"] if "[" not in e["field"] else f"{e['field']}: {e['message']}"
            )
            for e in r["errors"]
            if e["field"]
        }
        fixes = [w for w in r["warnings"] if w.get("overrides")][:MAX_FIXES]
        model = r.get("model") or {}
        startable, reason = start_state(r, bool(data[c["start_anyway"]]))
        out: dict[Any, Any] = {
            c["verdict"]: render.verdict_html(r, render.digest([config, data[c["gpu"]]]), errors),
            c["warnings"]: render.warnings_html(r["warnings"]),
            c["breakdown"]: render.breakdown_markdown(r),
            c["errors"]: render.errors_markdown(r["errors"]),
            c["model_info"]: ("✔ " if model.get("ok") else "✘ ") + render.esc(model.get("message", "")),
            c["start"]: gr.update(interactive=startable),
            c["queue_add"]: gr.update(interactive=startable),  # judged as Start is (jobs.judged)
            c["preflight"]: gr.update(interactive=startable),
            c["start_reason"]: render.esc(reason),
            estimated: {"config": config, "gpu": data[c["gpu"]], "fixes": [w["overrides"] for w in fixes]},
            **{
                b: gr.update(
                    visible=i < len(fixes), value=render.warning_fix_label(fixes[i]) if i < len(fixes) else ""
                )
                for i, b in enumerate(c["fix_btns"])
            },
        }
        return out

    def on_recommend(token: str, shown: dict[str, Any] | None) -> dict[Any, Any]:
        if not token or shown is None:
            return skip([recs_state, *c["rec_btns"]])
        config, gpu = shown["config"], shown["gpu"]
        recs = [] if token == "fits" else acts.recommend(config, gpu or "")[:MAX_RECS]
        return {
            recs_state: [r["overrides"] for r in recs],
            **{
                b: gr.update(
                    visible=i < len(recs), value=render.recommendation_label(recs[i]) if i < len(recs) else ""
                )
                for i, b in enumerate(c["rec_btns"])
            },
        }

    est_outputs = [
        c["verdict"], c["warnings"], c["breakdown"], c["errors"], c["model_info"], c["start"], c["preflight"],
        c["start_reason"], *c["fix_btns"], c["queue_add"], estimated,
    ]  # fmt: skip
    est_inputs = [*form.components, c["gpu"], dataset_state, c["start_anyway"]]
    calls = PageCalls()  # the form's events run in the page (webui/direct.py)
    api = calls.backend(on_estimate, est_inputs, est_outputs, "estimate")
    full = gr.on(
        [c["gpu"].change, dataset_state.change, c["start_anyway"].change, shared.blocks.load],
        None,
        inputs=est_inputs,
        outputs=est_outputs,
        js=estimate_js(
            api,
            len(est_outputs),
            states=[est_outputs.index(estimated)],
            errors=est_outputs.index(c["errors"]),
        ),
        **PRIVATE,
    )
    # One event per field, with that field alone as input: the frontend reads every input and every
    # trigger of an event each time it runs (a tree walk each), ~220 of them for one event on all fields.
    settles = [full] + [
        w.change(None, w, est_outputs, js=field_estimate_js(i, len(est_outputs)), **PRIVATE)
        for i, w in enumerate(form.components)
    ]
    for d in settles:
        # The search for fixes costs tens of ms on a config that does not fit: it waits until the estimate
        # has been still for a moment, so it never slows the verdict while the user types.
        d.then(None, inputs=rec_token, outputs=rec_token, js=SETTLED_REV, **PRIVATE)
    rec_token.change(
        on_recommend,
        inputs=[rec_token, estimated],
        outputs=[recs_state, *c["rec_btns"]],
        trigger_mode="always_last",
        show_progress="hidden",
        queue=False,
        **PRIVATE,
    )

    # ---- timestep density: training fields and the resolution -----------------------------------------
    def on_density(data: dict[Any, Any]) -> pd.DataFrame:
        return pd.DataFrame(acts.timestep_density(form.config(data)), columns=["sigma", "density"])

    density_in = [*form.in_section("training"), form["dataset.resolution"]]
    gr.on(
        [w.change for w in density_in] + [shared.blocks.load],
        on_density,
        inputs=set(density_in),
        outputs=c["density"],
        trigger_mode="always_last",
        show_progress="hidden",
        **PRIVATE,
    )

    # ---- derived fields, in the page: mixed precision follows the dtype; alpha follows the rank until
    # the user edits alpha (presets and templates relink it when they set alpha = rank).
    to_mixed = json.dumps({d: mixed_precision(d) for d in form.specs["model.dtype"].choices})
    form["model.dtype"].change(
        None, form["model.dtype"], c["mixed_precision"], js=f"(d) => ({to_mixed})[d] || ''", **PRIVATE,
    )  # fmt: skip
    form["lora.rank"].change(
        None, [form["lora.rank"], alpha_linked, form["lora.alpha"]], form["lora.alpha"],
        js="(rank, linked, alpha) => linked ? rank : alpha", **PRIVATE,
    )  # fmt: skip
    form["lora.alpha"].input(
        None, [form["lora.alpha"], form["lora.rank"]], alpha_linked,
        js="(alpha, rank) => alpha === rank", **PRIVATE,
    )  # fmt: skip

    # ---- dataset check and upload -------------------------------------------------------------------
    ds_widgets = [form[f"dataset.{k}"] for k in DATASET_KEYS]

    def on_dataset(data: dict[Any, Any]) -> dict[Any, Any]:
        config = form.config(data)
        r = acts.check_dataset(config)
        info = configs.facts_of_check(str(config["dataset"].get("path") or "demo"), r)
        pairs = edit_view.pairs_gallery(r)
        return {
            c["dataset_info"]: render.dataset_markdown(r),
            dataset_state: info,
            c["pairs_info"]: edit_view.pairs_markdown(r),
            c["pairs"]: gr.update(value=pairs or None, visible=bool(pairs)),
        }

    gr.on(
        [w.change for w in ds_widgets] + [shared.blocks.load, c["cap_done"].change],
        on_dataset,
        inputs=set(ds_widgets),
        outputs=[c["dataset_info"], dataset_state, c["pairs_info"], c["pairs"]],
        trigger_mode="always_last",
        show_progress="minimal",
        **PRIVATE,
    )

    def on_zip(file: str | None) -> dict[Any, Any]:
        if not file:
            return skip([form["dataset.path"], c["dataset_info"]])
        r = acts.upload_dataset(file)
        if not r["ok"]:
            return {c["dataset_info"]: f"✘ {render.esc(r['message'])}"}
        return {form["dataset.path"]: r["dataset_dir"]}

    c["zip"].upload(on_zip, c["zip"], [form["dataset.path"], c["dataset_info"]], **PRIVATE)
    wire_autotune(shared, c, form, alpha_linked, calls)
    wire_caption(shared, c, form)

    # ---- presets, fixes, templates ------------------------------------------------------------------
    def preset(name: str, title: str) -> Any:
        def fn(data: dict[Any, Any]) -> dict[Any, Any]:
            r = acts.apply_preset(form.config(data), name, bool(data[c["stack"]]))
            out: dict[Any, Any] = {c["preset_msg"]: render.preset_markdown(r, title)}
            if r["ok"]:
                lora = r["config"].get("lora") or {}
                out.update(form.updates(r["config"]))
                out[alpha_linked] = lora.get("alpha") == lora.get("rank")
            return out

        return fn

    preset_out = [*form.components, c["preset_msg"], alpha_linked]
    buttons = {
        **{
            n: (b, label) for (label, n), b in zip(configs.MODEL_PRESETS.items(), c["model_presets"].values())
        },
        **{
            n: (b, label) for (label, n), b in zip(configs.QUICK_PRESETS.items(), c["quick_presets"].values())
        },
        "quickstart": (c["quickstart"], "Demo (quickstart)"),
        "quickstart-edit": (c["quickstart_edit"], "Edit demo (quickstart-edit)"),
    }
    comps = form.components
    for name, (btn, label) in buttons.items():
        calls.form_event(
            btn.click, preset(name, label), comps, [c["stack"]], preset_out, f"preset_{name}", c["preset_msg"]
        )

    def on_lora_preset(data: dict[Any, Any]) -> dict[Any, Any]:
        name = data[c["lora_preset"]]
        return preset(name, name.capitalize())(data) if name else skip(preset_out)

    calls.form_event(
        c["lora_preset"].input,
        on_lora_preset,
        comps,
        [c["stack"], c["lora_preset"]],
        preset_out,
        "lora_preset",
        c["preset_msg"],
    )

    def apply_from(state: gr.State, i: int, key: str | None = None) -> Any:
        def fn(data: dict[Any, Any]) -> dict[Any, Any]:
            items = (data[state] or {}).get(key, []) if key else data[state] or []
            if i >= len(items):
                return skip(form.components)
            return form.updates(configs.apply_overrides(form.config(data), items[i]))

        return fn

    for i, b in enumerate(c["fix_btns"]):
        calls.form_event(b.click, apply_from(estimated, i, "fixes"), comps, [estimated], comps, f"fix_{i}")
    for i, b in enumerate(c["rec_btns"]):
        calls.form_event(
            b.click, apply_from(recs_state, i), comps, [recs_state], comps, f"recommendation_{i}"
        )

    def on_save(data: dict[Any, Any]) -> dict[Any, Any]:
        r = acts.save_template(form.config(data), data[c["tpl_name"]] or "")
        msg = (
            f"Saved template **{render.esc(data[c['tpl_name']])}**"
            if r["ok"]
            else render.errors_markdown(r["errors"])
        )
        return {c["tpl_msg"]: msg, c["tpl_pick"]: gr.update(choices=acts.list_templates())}

    c["tpl_save"].click(on_save, {*form.inputs, c["tpl_name"]}, [c["tpl_msg"], c["tpl_pick"]], **PRIVATE)
    # The list is read from disk whenever it is opened (templates saved by another tab or the CLI).
    c["tpl_pick"].focus(lambda: gr.update(choices=acts.list_templates()), None, c["tpl_pick"], **PRIVATE)

    def on_load(name: str | None) -> dict[Any, Any]:
        r = acts.load_template(name or "")
        if not r["ok"]:
            return {c["tpl_msg"]: render.errors_markdown(r["errors"])}
        lora = r["config"].get("lora") or {}
        return {
            **form.updates(r["config"]),
            c["tpl_msg"]: f"Loaded template **{render.esc(name)}**",
            alpha_linked: lora.get("alpha") == lora.get("rank"),
        }

    calls.form_event(
        c["tpl_pick"].input,
        lambda data: on_load(data[c["tpl_pick"]]),
        comps,
        [c["tpl_pick"]],
        [*comps, c["tpl_msg"], alpha_linked],
        "load_template",
        message=c["tpl_msg"],
    )

    # ---- start / pre-flight: the monitor (Runs tab) comes into view -----------------------------------
    def launch(kind: str) -> Any:
        def fn(data: dict[Any, Any]) -> dict[Any, Any]:
            config = form.config(data)
            if kind == "train":
                r = acts.start_run(config, "", bool(data[c["start_anyway"]]), data[c["gpu"]] or "")
            elif kind == "queue":
                r = acts.queue_add(config, bool(data[c["start_anyway"]]), data[c["gpu"]] or "")
            else:
                r = acts.preflight(config)
            if not r["ok"]:
                return {c["action_msg"]: render.errors_markdown(r["errors"])}
            if kind == "queue":  # the form stays: the next run can be set up and queued after it
                return {
                    c["action_msg"]: f"Queued job `{r['job_id']}` (number {r['position']} in the queue) → "
                    f"`{render.esc(r['run_dir'])}`; see the Queue tab",
                }
            verb = "Started" if kind == "train" else "Pre-flight started in"
            return {
                c["action_msg"]: f"{verb} `{render.esc(r['run_dir'])}`",
                shared.run_dir: r["run_dir"],
                shared.runs_changed: data[shared.runs_changed] + 1,
                shared.goto_tab: go_to("runs"),
            }

        return fn

    launch_out = [c["action_msg"], shared.run_dir, shared.runs_changed, shared.goto_tab]
    launch_in = {*form.inputs, shared.runs_changed, c["start_anyway"], c["gpu"]}
    c["start"].click(launch("train"), launch_in, launch_out, **PRIVATE)
    c["preflight"].click(launch("preflight"), launch_in, launch_out, **PRIVATE)
    c["queue_add"].click(launch("queue"), launch_in, launch_out, **PRIVATE)


def start_state(r: dict[str, Any], anyway: bool) -> tuple[bool, str]:
    """Whether Start is enabled for an assessment and what to say beside it: its errors always disable
    it; its blockers (does not fit) unless "start anyway" is ticked."""
    if not r["ok"]:
        if not r.get("available") and str(r.get("message", "")).startswith("unknown model"):
            return False, f"Start is disabled: {r['message']}"
        # The assessment's words (start_run refuses with them), the fields named as the form labels them.
        named = "; ".join(f"{render.field_name(e['field'])}: {e['message']}" for e in r["errors"][:3])
        return False, f"Start is disabled: fix first: {named}"
    if r.get("blockers") and not anyway:
        return (
            False,
            f'Start is disabled: {r["start_reason"]} (tick "Start anyway" if the GPU class is wrong)',
        )
    if r.get("blockers"):
        return True, f"Starting anyway: {r['start_reason']}"
    return True, ""
