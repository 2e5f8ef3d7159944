"""The Test LoRA tab: one image with a run's LoRA, at the run's own size and sampling settings."""

from __future__ import annotations

from typing import Any

import gradio as gr

from flux2_lora.config import GenerationSettings
from flux2_lora.webui import edit_view, render
from flux2_lora.webui.schema import generation_fields
from flux2_lora.webui.tabs import PRIVATE, Shared, skip
from flux2_lora.webui.widgets import make_widget

SETTINGS = tuple(GenerationSettings.model_fields)  # prompt first


def create_test_tab(shared: Shared, tab: gr.Tab) -> dict[str, Any]:
    # The fields are GenerationSettings' (as `flux2-lora generate` and the /generate API take them).
    specs = generation_fields()
    defaults = GenerationSettings()
    c: dict[str, Any] = {}
    c["lora"] = gr.Dropdown([], value=None, label="LoRA (finished runs)", elem_id="test-lora")
    c["prompt"] = make_widget(specs["prompt"], defaults.prompt, elem_id="test-prompt")
    with gr.Row():
        for name in SETTINGS[1:]:
            c[name] = make_widget(specs[name], getattr(defaults, name), elem_id=f"test-{name}")
    with gr.Row():  # edit LoRAs: the image(s) to edit, as FLUX.2's image= takes them
        c["reference"] = gr.Image(
            label="Reference image (edit LoRAs; optional)", type="filepath", sources=["upload"],
            height=200, elem_id="test-reference",
        )  # fmt: skip
        c["reference_path"] = gr.Textbox(
            label="…or reference image paths (one a line, in order; inside the allowed folders)",
            info="An edit run fills in the images its validation samples edited. Empty: text-to-image.",
            lines=2, elem_id="test-reference-path",
        )  # fmt: skip
    c["hint"] = gr.Markdown(
        "Steps, guidance and size start at the run's own validation settings.", elem_id="test-hint"
    )
    c["go"] = gr.Button("Generate", variant="primary", elem_id="generate-btn")
    c["image"] = gr.Image(
        label="Result", type="filepath", height=512, elem_id="test-image", buttons=["download", "fullscreen"]
    )
    c["msg"] = gr.Markdown(elem_id="test-message")
    c["tab"] = tab
    _wire(shared, c)
    return c


def _wire(shared: Shared, c: dict[str, Any]) -> None:
    acts = shared.actions

    def loras(current: str | None) -> Any:
        rows = [r for r in acts.list_runs() if r["lora"]]
        choices = [(r["name"], r["lora"]) for r in rows]
        keep = current if current in [v for _, v in choices] else None
        return gr.update(choices=choices, value=keep)

    gr.on(
        [shared.runs_changed.change, c["lora"].focus, c["tab"].select],
        loras,
        c["lora"],
        c["lora"],
        show_progress="hidden",
        **PRIVATE,
    )

    pick_outputs = [c["prompt"], c["steps"], c["guidance"], c["resolution"], c["hint"], c["reference_path"]]

    def on_pick(lora: str | None) -> dict[Any, Any]:
        if not lora:
            return skip(pick_outputs)
        d = acts.run_defaults(lora)
        return {
            c["prompt"]: d["prompt"],
            c["steps"]: d["steps"],
            c["guidance"]: d["guidance"],
            c["resolution"]: d["resolution"],
            c["reference_path"]: "\n".join(d.get("references") or []),
            c["hint"]: (
                f"The run sampled at {d['resolution']} px with {d['steps']} steps and guidance "
                f"{d['guidance']:g}; these are the defaults here."
            ),
        }

    c["lora"].change(on_pick, c["lora"], pick_outputs, **PRIVATE)

    def on_generate(data: dict[Any, Any]) -> dict[Any, Any]:
        try:
            refs = edit_view.references_of(acts.paths, data[c["reference"]], data[c["reference_path"]])
        except ValueError as e:
            return {c["image"]: None, c["msg"]: f"✘ {render.esc(str(e))}"}
        settings = {name: data[c[name]] for name in SETTINGS}
        r = acts.generate(data[c["lora"]] or "", **settings, references=refs)
        if not r["ok"]:
            return {c["image"]: None, c["msg"]: f"✘ {render.esc(r['message'])}"}
        return {
            c["image"]: r["image"],
            c[
                "msg"
            ]: f"{r['resolution']}×{r['resolution']} px · {r['steps']} steps · guidance {r['guidance']:g}"
            + (f" · edit of {len(r['references'])} reference image(s)" if r.get("references") else ""),
        }

    c["go"].click(
        on_generate,
        {c["lora"], c["reference"], c["reference_path"], *(c[name] for name in SETTINGS)},
        [c["image"], c["msg"]],
        **PRIVATE,
    )
