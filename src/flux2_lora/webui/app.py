"""The Gradio app: Training tab (form from the schema + live estimate + monitor) and Test LoRA tab.

Each button calls a function of :mod:`.actions`; the same functions are exposed as named API
endpoints (``gr.api``) so gradio_client drives exactly what the page drives. The UI process never
imports torch: training, pre-flight and generation run as subprocesses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from flux2_lora.config import DTYPE_TO_MIXED
from flux2_lora.webui import actions
from flux2_lora.webui.schema import dict_to_values, form_fields, section_docs, values_to_dict
from flux2_lora.webui.widgets import (
    CSS,
    breakdown_markdown,
    digest,
    errors_markdown,
    make_widget,
    recommendation_label,
    status_markdown,
    verdict_html,
)

MAX_RECS = 4
PRIVATE: dict[str, Any] = {"api_visibility": "private"}
DATASET_KEYS = (
    "path",
    "caption_extension",
    "default_caption",
    "resolution",
    "bucketing",
    "bucket_step",
    "trigger_word",
)


class Paths:
    def __init__(self, runs_dir: str | Path) -> None:
        self.runs = Path(runs_dir).expanduser().resolve()
        self.uploads = self.runs / "uploads"
        self.templates = self.runs / "templates"
        for p in (self.runs, self.uploads, self.templates):
            p.mkdir(parents=True, exist_ok=True)


def _lora_presets() -> list[str]:
    return [p["name"] for p in actions.presets() if p["kind"] == "lora"]


def build_app(runs_dir: str | Path = "runs") -> gr.Blocks:
    paths = Paths(runs_dir)
    runs_str = str(paths.runs)
    specs = form_fields()
    labels = {s.path: s.label for s in specs}
    defaults = dict_to_values(actions.sync_precision({**actions.default_dict_copy()}))
    gpus = actions.gpu_choices()
    default_gpu = actions.local_gpu() or (gpus[0] if gpus else None)

    with gr.Blocks(title="FLUX.2 LoRA trainer") as demo:
        gr.Markdown("# FLUX.2 LoRA trainer")
        run_dir = gr.State("")
        recs_state = gr.State([])
        with gr.Tab("Training"):
            with gr.Row():
                preset_btns = [
                    gr.Button(label, size="sm", elem_id=f"preset-{name}")
                    for label, name in actions.QUICK_PRESETS.items()
                ]
                quick_btn = gr.Button("Quickstart (demo)", size="sm", elem_id="preset-quickstart")
                lora_preset = gr.Dropdown(
                    _lora_presets(), value=None, label="LoRA preset", scale=2, elem_id="lora-preset"
                )
            preset_msg = gr.Markdown(elem_id="preset-message")
            error_box = gr.Markdown(elem_id="form-errors")
            widgets: list[gr.components.Component] = []
            section_errs: dict[str, gr.Markdown] = {}
            with gr.Row():
                with gr.Column(scale=3):
                    docs = section_docs()
                    for section in dict.fromkeys(s.section for s in specs):
                        own = [(i, s) for i, s in enumerate(specs) if s.section == section]
                        built: dict[int, Any] = {}
                        with gr.Accordion(section.capitalize(), open=True):
                            gr.Markdown(docs.get(section, ""))
                            for i, s in own:
                                if not s.advanced:
                                    built[i] = make_widget(s, defaults[i])
                            if section == "model":
                                model_info = gr.Markdown(elem_id="model-check")
                            if section == "dataset":
                                zip_upload = gr.File(
                                    label="…or upload a dataset ZIP",
                                    file_types=[".zip"],
                                    elem_id="dataset-zip",
                                )
                                dataset_info = gr.Markdown(elem_id="dataset-check")
                            if any(s.advanced for _, s in own):
                                with gr.Accordion("Advanced", open=False):
                                    for i, s in own:
                                        if s.advanced:
                                            built[i] = make_widget(s, defaults[i])
                            section_errs[section] = gr.Markdown(elem_classes="section-errors")
                        widgets += [built[i] for i, _ in own]
                with gr.Column(scale=2):
                    gpu = gr.Dropdown(
                        gpus, value=default_gpu, label="GPU", elem_id="gpu-choice", allow_custom_value=False
                    )
                    verdict = gr.HTML(verdict_html({"message": "estimating…"}, ""), elem_id="estimate-panel")
                    rec_btns = [
                        gr.Button(visible=False, size="sm", elem_id=f"rec-{i}") for i in range(MAX_RECS)
                    ]
                    breakdown = gr.Markdown(elem_id="estimate-breakdown")
                    density = gr.LinePlot(
                        x="sigma",
                        y="density",
                        title="Timestep sampling density (σ)",
                        height=220,
                        elem_id="density-plot",
                    )
                    with gr.Accordion("Templates", open=False):
                        tpl_name = gr.Textbox(label="Template name", elem_id="template-name")
                        tpl_save = gr.Button("Save template", size="sm")
                        tpl_pick = gr.Dropdown(
                            actions.list_templates(str(paths.templates)),
                            label="Load template",
                            elem_id="template-pick",
                        )
                        tpl_msg = gr.Markdown()
            with gr.Row():
                start_btn = gr.Button("Start training", variant="primary", elem_id="start-btn")
                preflight_btn = gr.Button("Pre-flight", elem_id="preflight-btn")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn")
                resume_btn = gr.Button("Resume (latest checkpoint)", elem_id="resume-btn")
            action_msg = gr.Markdown(elem_id="action-message")
            status_md = gr.HTML(status_markdown({"state": "none"}), elem_id="run-status")
            with gr.Row():
                loss_plot = gr.LinePlot(x="step", y="loss", title="Loss", height=220, elem_id="loss-plot")
                lr_plot = gr.LinePlot(x="step", y="lr", title="Learning rate", height=220)
                mem_plot = gr.LinePlot(
                    x="step", y="GiB", color="series", title="Memory (measured vs estimate)", height=220
                )
            gallery = gr.Gallery(label="Validation samples", columns=6, height=260, elem_id="samples")
            log_box = gr.Textbox(label="Log", lines=10, max_lines=10, autoscroll=True, elem_id="log-tail")
            preflight_md = gr.Markdown(elem_id="preflight-result")
            with gr.Accordion("Runs", open=True):
                runs_refresh = gr.Button("Refresh", size="sm")
                runs_table = gr.Dataframe(
                    headers=["run", "state", "step", "total", "LoRA"], interactive=False, elem_id="runs-table"
                )
                run_pick = gr.Dropdown([], label="Monitor / download run", elem_id="run-pick")
                lora_dl = gr.File(label="LoRA file", elem_id="lora-download")
        with gr.Tab("Test LoRA"):
            t_lora = gr.Dropdown([], label="LoRA (from the runs)", elem_id="test-lora")
            t_scale = gr.Slider(0, 2, value=1.0, step=0.05, label="LoRA scale")
            t_prompt = gr.Textbox(label="Prompt", lines=2, elem_id="test-prompt")
            with gr.Row():
                t_steps = gr.Slider(1, 100, value=8, step=1, label="Steps")
                t_seed = gr.Number(0, precision=0, label="Seed")
                t_guid = gr.Slider(0, 20, value=4.0, step=0.5, label="Guidance")
            t_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
            t_img = gr.Image(label="Result", type="filepath", elem_id="test-image")
            t_msg = gr.Markdown()

        form = widgets
        n = len(form)
        sections = list(section_errs)

        # ---- form → estimate (every change) --------------------------------------------------------
        def on_form(*vals: Any) -> list[Any]:
            config = values_to_dict(vals[:n])
            result = actions.estimate(config, vals[n])
            errs = result.get("errors", [])
            per_section = {s: [e for e in errs if e["field"].split(".")[0] == s] for s in sections}
            recs = (
                (result.get("report") or {}).get("recommendations") or [] if result.get("available") else []
            )
            btns = [
                gr.update(visible=i < len(recs), value=recommendation_label(recs[i]) if i < len(recs) else "")
                for i in range(MAX_RECS)
            ]
            return [
                verdict_html(result, digest(config)),
                breakdown_markdown(result),
                errors_markdown(errs, labels),
                recs[:MAX_RECS],
                *btns,
                *(errors_markdown(per_section[s], labels) for s in sections),
            ]

        est_out = [verdict, breakdown, error_box, recs_state, *rec_btns, *section_errs.values()]
        gr.on(
            [w.change for w in form] + [gpu.change, demo.load],
            on_form,
            inputs=[*form, gpu],
            outputs=est_out,
            trigger_mode="always_last",
            show_progress="hidden",
            queue=False,
            **PRIVATE,
        )

        def on_density(*vals: Any) -> pd.DataFrame:
            return pd.DataFrame(actions.timestep_density(values_to_dict(vals)), columns=["sigma", "density"])

        t_idx = [i for i, s in enumerate(specs) if s.section == "training" or s.path == "dataset.resolution"]
        gr.on(
            [form[i].change for i in t_idx] + [demo.load],
            on_density,
            inputs=form,
            outputs=density,
            trigger_mode="always_last",
            show_progress="hidden",
            **PRIVATE,
        )

        # mixed precision follows dtype
        idx = {s.path: i for i, s in enumerate(specs)}
        form[idx["model.dtype"]].change(
            lambda d: DTYPE_TO_MIXED.get(d, "auto"),
            form[idx["model.dtype"]],
            form[idx["training.mixed_precision"]],
            show_progress="hidden",
            **PRIVATE,
        )

        def on_model(path: str, variant: str) -> str:
            r = actions.check_model(path or "", variant or "auto")
            return ("✅ " if r["ok"] else "❌ ") + r["message"]

        m_in = [form[idx["model.path"]], form[idx["model.variant"]]]
        gr.on(
            [w.change for w in m_in] + [demo.load],
            on_model,
            inputs=m_in,
            outputs=model_info,
            trigger_mode="always_last",
            show_progress="hidden",
            **PRIVATE,
        )

        d_idx = [idx[f"dataset.{k}"] for k in DATASET_KEYS]

        def on_dataset(*vals: Any) -> str:
            cfg = {"dataset": values_to_dict_subset([specs[i] for i in d_idx], vals)}
            return dataset_markdown(actions.check_dataset(cfg, str(paths.uploads)))

        gr.on(
            [form[i].change for i in d_idx] + [demo.load],
            on_dataset,
            inputs=[form[i] for i in d_idx],
            outputs=dataset_info,
            trigger_mode="always_last",
            show_progress="minimal",
            **PRIVATE,
        )

        def on_zip(file: str | None) -> Any:
            if not file:
                return gr.skip(), gr.skip()
            r = actions.upload_dataset(file, str(paths.uploads))
            if not r["ok"]:
                return gr.skip(), f"❌ {r['message']}"
            return r["dataset_dir"], f"Extracted to `{r['dataset_dir']}`"

        zip_upload.upload(on_zip, zip_upload, [form[idx["dataset.path"]], dataset_info], **PRIVATE)

        # ---- presets, recommendations, templates ---------------------------------------------------
        def preset_fn(name: str) -> Any:
            def fn(*vals: Any) -> list[Any]:
                r = actions.apply_preset(values_to_dict(vals), name)
                msg = (
                    f"Preset **{name}**: {r.get('description', '')}"
                    if r["ok"]
                    else errors_markdown(r["errors"], labels)
                )
                return [*dict_to_values(r["config"]), msg]

            return fn

        for btn, name in zip(preset_btns, actions.QUICK_PRESETS.values()):
            btn.click(preset_fn(name), form, [*form, preset_msg], **PRIVATE)
        quick_btn.click(preset_fn("quickstart"), form, [*form, preset_msg], **PRIVATE)

        def on_lora_preset(name: str | None, *vals: Any) -> list[Any]:
            if not name:
                return [gr.skip()] * (n + 1)
            return preset_fn(name)(*vals)

        lora_preset.input(on_lora_preset, [lora_preset, *form], [*form, preset_msg], **PRIVATE)

        def apply_rec(i: int) -> Any:
            def fn(recs: list[dict[str, Any]], *vals: Any) -> list[Any]:
                if i >= len(recs or []):
                    return [gr.skip()] * n
                return dict_to_values(actions.apply_overrides(values_to_dict(vals), recs[i]["overrides"]))

            return fn

        for i, b in enumerate(rec_btns):
            b.click(apply_rec(i), [recs_state, *form], form, **PRIVATE)

        def on_save(name: str, *vals: Any) -> list[Any]:
            r = actions.save_template(values_to_dict(vals), name, str(paths.templates))
            msg = f"Saved `{r['template_file']}`" if r["ok"] else errors_markdown(r["errors"], labels)
            return [msg, gr.update(choices=actions.list_templates(str(paths.templates)))]

        tpl_save.click(on_save, [tpl_name, *form], [tpl_msg, tpl_pick], **PRIVATE)

        def on_load(name: str | None, *vals: Any) -> list[Any]:
            r = actions.load_template(name or "", str(paths.templates))
            if not r["ok"]:
                return [*([gr.skip()] * n), errors_markdown(r["errors"], labels)]
            merged = actions.sync_precision(actions.deep_merge(actions.default_dict_copy(), r["config"]))
            return [*dict_to_values(merged), f"Loaded template **{name}**"]

        tpl_pick.input(on_load, [tpl_pick, *form], [*form, tpl_msg], **PRIVATE)

        # ---- start / stop / resume / pre-flight ----------------------------------------------------
        def on_start(*vals: Any) -> list[Any]:
            r = actions.start_run(values_to_dict(vals), runs_str)
            if not r["ok"]:
                return [gr.skip(), errors_markdown(r["errors"], labels), errors_markdown(r["errors"], labels)]
            return [r["run_dir"], f"Started `{r['run_dir']}`", ""]

        start_btn.click(on_start, form, [run_dir, action_msg, error_box], **PRIVATE)

        def on_stop(rd: str) -> str:
            return actions.stop_run(rd, runs_str)["message"]

        stop_btn.click(on_stop, run_dir, action_msg, **PRIVATE)

        def on_resume(rd: str) -> list[Any]:
            r = actions.resume_run(rd, runs_str)
            return (
                [r["run_dir"], "Resumed from the latest checkpoint"]
                if r["ok"]
                else [gr.skip(), errors_markdown(r["errors"], labels)]
            )

        resume_btn.click(on_resume, run_dir, [run_dir, action_msg], **PRIVATE)

        def on_preflight(*vals: Any) -> list[Any]:
            r = actions.preflight(values_to_dict(vals), runs_str)
            if not r["ok"]:
                return [gr.skip(), errors_markdown(r["errors"], labels)]
            return [r["run_dir"], "Pre-flight running (a few measured steps)…"]

        preflight_btn.click(on_preflight, form, [run_dir, action_msg], **PRIVATE)

        # ---- monitor -------------------------------------------------------------------------------
        from flux2_lora.webui.monitor_view import tick_outputs

        timer = gr.Timer(1.0)
        last_sig = gr.State(None)
        mon_out = [status_md, loss_plot, lr_plot, mem_plot, gallery, log_box, lora_dl, preflight_md, last_sig]
        timer.tick(
            lambda rd, sig: tick_outputs(rd, sig, runs_str),
            [run_dir, last_sig],
            mon_out,
            show_progress="hidden",
            **PRIVATE,
        )

        def refresh_runs() -> list[Any]:
            rows = actions.list_runs(runs_str)
            table = [
                [r["name"], r["state"], r["step"], r["total_steps"], "yes" if r["lora"] else ""] for r in rows
            ]
            dirs = [(r["name"], r["run_dir"]) for r in rows]
            loras = [(r["name"], r["lora"]) for r in rows if r["lora"]]
            return [table, gr.update(choices=dirs), gr.update(choices=loras)]

        gr.on(
            [runs_refresh.click, demo.load, start_btn.click],
            refresh_runs,
            None,
            [runs_table, run_pick, t_lora],
            **PRIVATE,
        )
        run_pick.input(lambda rd: [rd, None], run_pick, [run_dir, last_sig], **PRIVATE)

        def on_generate(
            lora: str, prompt: str, scale: float, steps: int, seed: int, guidance: float
        ) -> list[Any]:
            r = actions.generate(lora, prompt, runs_str, scale, int(steps), int(seed or 0), 0, guidance)
            return [r["image"], ""] if r["ok"] else [None, f"❌ {r['message']}"]

        t_btn.click(
            on_generate, [t_lora, t_prompt, t_scale, t_steps, t_seed, t_guid], [t_img, t_msg], **PRIVATE
        )

        from flux2_lora.webui.api import register_api

        register_api(paths)
    return demo


def values_to_dict_subset(subset: list[Any], vals: tuple[Any, ...]) -> dict[str, Any]:
    from flux2_lora.webui.schema import from_widget

    return {s.key: from_widget(s, v) for s, v in zip(subset, vals)}


def dataset_markdown(r: dict[str, Any]) -> str:
    if "report" not in r:
        return f"❌ {r.get('message', 'dataset check failed')}"
    rep = r["report"]
    head = "✅" if r["ok"] else "❌"
    lines = [
        f"{head} **{rep['num_items']}** usable of {rep['num_images_found']} images · {rep['num_captions']} "
        f"captions · {rep['num_missing_captions']} missing · {rep['num_unused_captions']} unused"
    ]
    for f, ps in list(rep["problems"].items())[:20]:
        lines += [f"- {p['severity']}: `{f}` {p['message']}" for p in ps]
    lines += [
        f"- trigger {t['severity']}: {t['file'] + ': ' if t['file'] else ''}{t['message']}"
        for t in r.get("trigger", [])
    ]
    if r.get("bucket_text"):
        lines += ["", "```", r["bucket_text"], "```"]
    return "\n".join(lines)


def launch(
    runs_dir: str = "runs",
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    auth: tuple[str, str] | None = None,
    **kwargs: Any,
) -> tuple[gr.Blocks, str]:
    demo = build_app(runs_dir)
    paths = Paths(runs_dir)
    # Files are served only from the runs folder (runs, samples, LoRAs) and the extracted uploads.
    _, url, _ = demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        auth=auth,
        css=CSS,
        allowed_paths=[str(paths.runs), str(paths.uploads)],
        **kwargs,
    )
    return demo, url
