"""What the web UI does, bound once to the app's folders: one method per API endpoint (no Gradio, no torch).

The buttons of the page and the named API endpoints (gradio_client) call the same methods, so a script
drives exactly what a user clicks. Arguments and results are JSON-able; each endpoint's arguments are
checked against its type hints first (:mod:`~flux2_lora.webui.requests`), every config is validated by the
one schema and every path a request names is checked by :class:`~flux2_lora.webui.paths.AppPaths`.
"""

from __future__ import annotations

from typing import Any

from flux2_lora.webui import caption_preview, configs, datasets, jobs, ops, sweeps
from flux2_lora.webui.paths import AppPaths
from flux2_lora.webui.requests import checked

# The methods exposed as JSON API endpoints, in the order the API page lists them (upload_dataset and the
# downloads take or give files, which need file components: see api.py).
API = (
    "estimate",
    "recommend",
    "validate",
    "apply_preset",
    "presets",
    "check_model",
    "check_dataset",
    "timestep_density",
    "start_run",
    "preflight",
    "preflight_result",
    "run_status",
    "stop_run",
    "resume_run",
    "list_runs",
    "compare_runs",
    "save_template",
    "load_template",
    "list_templates",
    "run_defaults",
    "generate",
    "autotune",
    "sweep_fields",
    "sweep_plan",
    "start_sweep",
    "sweep_status",
    "stop_sweep",
    "list_sweeps",
    "queue_add",
    "queue_list",
    "queue_cancel",
    "queue_run",
    "ask_run",
    "caption_model",
    "caption_start",
    "caption_status",
    "caption_preview",
    "caption_save",
)


class Actions:
    """The UI's actions on one set of folders (runs, uploads, templates, allowed data folders)."""

    def __init__(self, paths: AppPaths) -> None:
        self.paths = paths

    # ---- configs --------------------------------------------------------------------------------------
    def estimate(self, config: dict[str, Any], gpu: str = "") -> dict[str, Any]:
        """Validation errors, the memory estimate on the GPU (default: the local one), warnings with fixes,
        and the change sets that make it fit."""
        return self.assess(config, gpu)

    def assess(
        self,
        config: dict[str, Any],
        gpu: str = "",
        dataset: dict[str, Any] | None = None,
        with_recommendations: bool = True,
    ) -> dict[str, Any]:
        """The estimate endpoint's answer; the Train tab passes its cached dataset check (``dataset``, used
        only while it is about the form's dataset path) and fetches the fixes separately. Not an endpoint."""
        return configs.estimate(self.paths, config, gpu or None, dataset, with_recommendations)

    def recommend(self, config: dict[str, Any], gpu: str = "") -> list[Any]:
        """Change sets that make the config fit the GPU."""
        return configs.recommend(self.paths, config, gpu or None)

    def validate(self, config: dict[str, Any]) -> dict[str, Any]:
        """The assessment (errors by field, warnings with fixes, verdict) and the normalised config."""
        return configs.validate(self.paths, config)

    def apply_preset(self, config: dict[str, Any], name: str, stack: bool = False) -> dict[str, Any]:
        """The config with a preset applied and the list of fields it changed."""
        return configs.apply_preset(config, name, stack)

    def presets(self) -> list[Any]:
        return configs.presets()

    def check_model(self, path: str, variant: str = "auto") -> dict[str, Any]:
        return configs.check_model(self.paths, path, variant)

    def timestep_density(self, config: dict[str, Any]) -> list[Any]:
        return configs.timestep_density(config)

    def save_template(self, config: dict[str, Any], name: str) -> dict[str, Any]:
        return configs.save_template(self.paths, config, name)

    def load_template(self, name: str) -> dict[str, Any]:
        return configs.load_template(self.paths, name)

    def list_templates(self) -> list[Any]:
        return configs.list_templates(self.paths)

    # ---- data -----------------------------------------------------------------------------------------
    def upload_dataset(self, file: str | None) -> dict[str, Any]:
        """Unpack an uploaded ZIP into a fresh folder of the uploads folder: {ok, dataset_dir | message}."""
        return datasets.upload_dataset(self.paths, file)

    def check_dataset(self, config: dict[str, Any]) -> dict[str, Any]:
        return datasets.check_dataset(self.paths, config)

    # ---- runs -----------------------------------------------------------------------------------------
    def start_run(
        self, config: dict[str, Any], resume: str = "", start_anyway: bool = False, gpu: str = ""
    ) -> dict[str, Any]:
        """Refused for what the assessment calls an error; for a run that does not fit ``gpu`` (default
        the local GPU) or the host RAM, unless ``start_anyway`` (a GPU class is a guess)."""
        return jobs.start_run(self.paths, config, resume or None, start_anyway, gpu or None)

    def preflight(self, config: dict[str, Any]) -> dict[str, Any]:
        return jobs.preflight(self.paths, config)

    def preflight_result(self, run_dir: str) -> dict[str, Any]:
        return jobs.preflight_result(self.paths, run_dir)

    def run_status(self, run_dir: str) -> dict[str, Any]:
        return jobs.run_status(self.paths, run_dir)

    def stop_run(self, run_dir: str, timeout_s: float = 30.0) -> dict[str, Any]:
        return jobs.stop_run(self.paths, run_dir, timeout_s)

    def resume_run(self, run_dir: str) -> dict[str, Any]:
        return jobs.resume_run(self.paths, run_dir)

    def list_runs(self) -> list[Any]:
        return jobs.list_runs(self.paths)

    def lora_file(self, run_dir: str) -> str | None:
        return jobs.lora_file(self.paths, run_dir)

    def compare_runs(self, run_dirs: list[str]) -> dict[str, Any]:
        """The comparison of two or more runs (as ``flux2-lora compare --json``), with the loss curves
        and the sample grid written as PNGs the page can show."""
        return jobs.compare_runs(self.paths, run_dirs)

    def run_defaults(self, lora: str) -> dict[str, Any]:
        """The run's own sampling settings (prompt, steps, guidance, resolution) for Test LoRA."""
        return jobs.run_defaults(self.paths, lora)

    def generate(
        self,
        lora: str,
        prompt: str,
        scale: float = 1.0,
        steps: int = 0,
        seed: int = 0,
        resolution: int = 0,
        guidance: float = -1.0,
        references: list[str] | None = None,
    ) -> dict[str, Any]:
        """One image with a run's LoRA (steps 0, resolution 0, guidance < 0: the run's own settings);
        ``references``: the input images of an edit LoRA (paths inside the allowed folders)."""
        return jobs.generate(self.paths, lora, prompt, scale, steps, seed, resolution, guidance, references)

    # ---- experiments: auto-tune and sweeps ------------------------------------------------------------
    def autotune(self, config: dict[str, Any], gpu: str = "") -> dict[str, Any]:
        """A config proposed from the form's dataset, each value with its reason, fitted to the GPU."""
        return sweeps.autotune(self.paths, config, gpu)

    def sweep_fields(self) -> list[Any]:
        """The config fields a sweep may vary (path, kind, default, choices, help)."""
        return sweeps.fields()

    def sweep_plan(self, spec: dict[str, Any], gpu: str = "") -> dict[str, Any]:
        """A sweep spec checked: errors by field, the trial count and the largest trial's memory."""
        return sweeps.plan(self.paths, spec, gpu)

    def start_sweep(self, spec: dict[str, Any], name: str, gpu: str = "") -> dict[str, Any]:
        """Launch (or continue) the sweep in <runs>/<name> as a `flux2-lora sweep` subprocess."""
        return sweeps.start(self.paths, spec, name, gpu)

    def sweep_status(self, name: str) -> dict[str, Any]:
        """The sweep's trials (state, parameters, objective, reason, run) and the best so far."""
        return sweeps.status(self.paths, name)

    def stop_sweep(self, name: str) -> dict[str, Any]:
        return sweeps.stop(self.paths, name)

    def list_sweeps(self) -> list[Any]:
        return sweeps.list_sweeps(self.paths)

    # ---- operations: the queue, sample/save now, captioning (webui/ops.py) ----------------------------
    def queue_add(self, config: dict[str, Any], start_anyway: bool = False, gpu: str = "") -> dict[str, Any]:
        """Queue a run (refused as Start refuses it); the UI's runner starts it after the jobs before it."""
        return ops.queue_add(self.paths, config, start_anyway, gpu or None)

    def queue_list(self) -> dict[str, Any]:
        """The queue's jobs, oldest first, and whether a worker runs it."""
        return ops.queue_list(self.paths)

    def queue_cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued job, or stop a running one (it checkpoints, then ends cancelled)."""
        return ops.queue_cancel(self.paths, job_id)

    def queue_run(self) -> dict[str, Any]:
        """Start this UI's queue runner for what is queued (e.g. after a restart)."""
        return ops.queue_run(self.paths)

    def ask_run(self, run_dir: str, what: str) -> dict[str, Any]:
        """Ask a running run to sample now ("sample") or save a checkpoint now ("save")."""
        return ops.ask_run(self.paths, run_dir, what)

    def caption_model(self, model: str) -> dict[str, Any]:
        """Whether a captioning model (Hub id or folder) can be loaded here, and why not."""
        return ops.caption_model(self.paths, model)

    def caption_start(
        self,
        dataset: str,
        model: str,
        mode: str = "keep",
        trigger: str = "",
        caption_extension: str = ".txt",
        device: str = "auto",
    ) -> dict[str, Any]:
        """Caption a dataset folder (keep / prefix / overwrite) with `flux2-lora caption` in a subprocess."""
        return ops.caption_start(self.paths, dataset, model, mode, trigger, caption_extension, device)

    def caption_status(self, dataset: str) -> dict[str, Any]:
        """The captioning of a dataset folder: state, progress bar, output."""
        return ops.caption_status(self.paths, dataset)

    def caption_preview(self, dataset: str, caption_extension: str = ".txt", page: int = 0) -> dict[str, Any]:
        """One page of a dataset folder's images with their captions and thumbnails."""
        return caption_preview.caption_preview(self.paths, dataset, caption_extension, page)

    def caption_save(self, dataset: str, caption_extension: str, edits: dict[str, str]) -> dict[str, Any]:
        """Write edited captions ({image path inside the folder: caption}) beside their images."""
        return caption_preview.caption_save(self.paths, dataset, caption_extension, edits)


# Every endpoint (and the upload and downloads) refuses an argument of the wrong type by name.
for _name in (*API, "upload_dataset", "lora_file"):
    setattr(Actions, _name, checked(getattr(Actions, _name)))
