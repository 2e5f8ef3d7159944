"""Named API endpoints (gradio_client): thin wrappers binding the app's folders to :mod:`.actions`."""

from __future__ import annotations

from typing import Any

import gradio as gr

from flux2_lora.webui import actions


def register_api(paths: Any) -> None:
    """Call inside the Blocks context. Each endpoint takes and returns JSON-able values."""
    runs_dir, uploads, templates = str(paths.runs), str(paths.uploads), str(paths.templates)

    def estimate(config: dict, gpu: str = "") -> dict:  # type: ignore[type-arg]
        return actions.estimate(config, gpu or None)

    def apply_preset(config: dict, name: str) -> dict:  # type: ignore[type-arg]
        return actions.apply_preset(config, name)

    def validate(config: dict) -> dict:  # type: ignore[type-arg]
        return actions.validate(config)

    def check_dataset(config: dict) -> dict:  # type: ignore[type-arg]
        return actions.check_dataset(config, uploads)

    def check_model(path: str, variant: str = "auto") -> dict:  # type: ignore[type-arg]
        return actions.check_model(path, variant)

    def start_run(config: dict, resume: str = "") -> dict:  # type: ignore[type-arg]
        return actions.start_run(config, runs_dir, resume or None)

    def preflight(config: dict) -> dict:  # type: ignore[type-arg]
        return actions.preflight(config, runs_dir)

    def preflight_result(run_dir: str) -> dict:  # type: ignore[type-arg]
        return actions.preflight_result(run_dir, runs_dir)

    def run_status(run_dir: str) -> dict:  # type: ignore[type-arg]
        return actions.run_status(run_dir, runs_dir)

    def stop_run(run_dir: str, timeout_s: float = 30.0) -> dict:  # type: ignore[type-arg]
        return actions.stop_run(run_dir, runs_dir, timeout_s)

    def resume_run(run_dir: str) -> dict:  # type: ignore[type-arg]
        return actions.resume_run(run_dir, runs_dir)

    def list_runs() -> list:  # type: ignore[type-arg]
        return actions.list_runs(runs_dir)

    def presets() -> list:  # type: ignore[type-arg]
        return actions.presets()

    def timestep_density(config: dict) -> list:  # type: ignore[type-arg]
        return actions.timestep_density(config)

    def save_template(config: dict, name: str) -> dict:  # type: ignore[type-arg]
        return actions.save_template(config, name, templates)

    def load_template(name: str) -> dict:  # type: ignore[type-arg]
        return actions.load_template(name, templates)

    def generate(
        lora: str,
        prompt: str,
        scale: float = 1.0,
        steps: int = 8,
        seed: int = 0,
        resolution: int = 0,
        guidance: float = 4.0,
    ) -> dict:  # type: ignore[type-arg]
        return actions.generate(lora, prompt, runs_dir, scale, steps, seed, resolution, guidance)

    for fn in (
        estimate,
        apply_preset,
        validate,
        check_dataset,
        check_model,
        start_run,
        preflight,
        preflight_result,
        run_status,
        stop_run,
        resume_run,
        list_runs,
        presets,
        timestep_density,
        save_template,
        load_template,
        generate,
    ):
        gr.api(fn, api_name=fn.__name__)

    # Files need a File output so the client downloads them (served only from the runs folder).
    dl_in = gr.Textbox(visible=False)
    dl_out = gr.File(visible=False)
    dl_in.submit(lambda rd: actions.lora_file(rd, runs_dir), dl_in, dl_out, api_name="download_lora")
    img_in = gr.Textbox(visible=False)
    img_out = gr.File(visible=False)
    img_in.submit(lambda p: _inside_file(p, runs_dir), img_in, img_out, api_name="download_file")


def _inside_file(path: str, runs_dir: str) -> str | None:
    from pathlib import Path

    base = Path(runs_dir).resolve()
    p = Path(path or "").resolve()
    return str(p) if base in p.parents and p.is_file() else None
