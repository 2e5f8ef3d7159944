"""The model card of a run (README.md in the Hugging Face Hub's format), from the run folder alone:
config.yaml, status.json, metrics.jsonl, eval.jsonl and samples/index.jsonl (pure Python: no torch).

Every finished run writes one; ``flux2-lora push`` uploads it with the LoRA files and the samples."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from flux2_lora import runs
from flux2_lora.variants import VARIANTS

CARD_FILE = "README.md"
MAX_WIDGETS = 6  # the Hub's card shows a handful; the latest sample of each prompt

# The base models' licenses as their Hub cards publish them (the LoRA is a derivative: its card repeats
# the base's terms). A local folder or the demo has no published license: "other", named as unknown.
LICENSES: dict[str, dict[str, str]] = {
    "dev": {
        "license": "other",
        "license_name": "flux-dev-non-commercial-license",
        "license_link": "https://huggingface.co/black-forest-labs/FLUX.2-dev/blob/main/LICENSE.md",
    },
    "klein-9b": {
        "license": "other",
        "license_name": "flux-non-commercial-license",
        "license_link": "https://huggingface.co/black-forest-labs/FLUX.2-klein-9B/blob/main/LICENSE.md",
    },
    "klein-4b": {"license": "apache-2.0"},
}


class CardError(Exception):
    """A run folder that cannot be described (named in the message)."""


def _variant(config: dict[str, Any], status: runs.RunStatus | None) -> str:
    extra = (status.extra if status else None) or {}
    name = str(extra.get("variant") or (config.get("model") or {}).get("variant") or "")
    return name if name in VARIANTS else ""


def _base_model(config: dict[str, Any], variant: str) -> str | None:
    """The hub id the LoRA was trained on; a local folder's variant is named by its public id."""
    path = str((config.get("model") or {}).get("path") or "")
    if path.count("/") == 1 and not path.startswith((".", "/", "~")):
        return path
    ids = VARIANTS[variant].hub_ids if variant else ()
    return ids[0] if ids else None


def _widgets(run_dir: Path) -> list[dict[str, Any]]:
    """The latest sample of each prompt, as the Hub's widget entries (paths relative to the repo)."""
    latest: dict[str, dict[str, Any]] = {}
    for s in runs.read_jsonl(run_dir / runs.SAMPLES_INDEX):
        file, prompt = s.get("file"), s.get("prompt")
        if not isinstance(file, str) or not isinstance(prompt, str) or not file.startswith("samples/"):
            continue  # a hand-edited index: only files inside samples/ are published
        if ".." in Path(file).parts or not (run_dir / file).is_file():
            continue
        latest[prompt] = {"text": prompt, "output": {"url": file}}
    return list(latest.values())[-MAX_WIDGETS:]


def _last(rows: list[dict[str, Any]], key: str) -> float | None:
    for row in reversed(rows):
        v = row.get(key)
        if isinstance(v, (int, float)) and v == v:  # NaN is "not measured"
            return float(v)
    return None


def card_text(run_dir: str | Path) -> str:
    """README.md for the run: YAML front matter (base_model, tags, trigger word, license, widgets), then how
    to load it, the training settings and the measured figures."""
    run = Path(run_dir)
    data, issues = _read_config(run)
    if data is None:
        raise CardError(f"{run / runs.CONFIG_FILE}: {issues}")
    status = runs.read_status(run)
    variant = _variant(data, status)
    model, ds, lora, tr = (data.get(k) or {} for k in ("model", "dataset", "lora", "training"))
    trigger = str(ds.get("trigger_word") or "").strip()
    base = _base_model(data, variant)
    front: dict[str, Any] = {}
    if base:
        front["base_model"] = base
        front["base_model_relation"] = "adapter"
    front["library_name"] = "diffusers"
    front.update(LICENSES.get(variant, {"license": "other", "license_name": "see-base-model"}))
    front["tags"] = ["text-to-image", "diffusers", "lora", "flux2", "flux2-lora", "template:sd-lora"]
    if trigger:
        front["instance_prompt"] = trigger
    widgets = _widgets(run)
    if widgets:
        front["widget"] = widgets
    title = VARIANTS[variant].title if variant else "FLUX.2"
    pipe = VARIANTS[variant].pipeline_class if variant else "Flux2Pipeline"
    metrics = runs.read_jsonl(run / runs.METRICS_FILE)
    evals = runs.read_jsonl(run / runs.EVAL_FILE)
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {run.name}: a {title} LoRA",
        "",
        f"A LoRA for {title}, trained with [flux2-lora](https://github.com/flux2-lora/flux2-lora).",
    ]
    if trigger:
        lines += ["", f"**Trigger word:** `{trigger}` (put it in your prompt)."]
    lines += [
        "",
        "## Use it",
        "",
        "```python",
        "import torch",
        f"from diffusers import {pipe}",
        "",
        f'pipe = {pipe}.from_pretrained("{base or "<base model>"}", torch_dtype=torch.bfloat16).to("cuda")',
        f'pipe.load_lora_weights("<this repo>", weight_name="{runs.LORA_FILE}")',
        f'image = pipe("{_prompt_example(widgets, trigger)}").images[0]',
        "```",
        "",
        f"ComfyUI: put `{runs.COMFYUI_LORA_FILE}` in `models/loras` and load it with a LoRA loader node"
        if (run / runs.COMFYUI_LORA_FILE).is_file()
        else f"ComfyUI: `{runs.LORA_FILE}` loads with a LoRA loader node (diffusers key names).",
        "",
        "## Training settings",
        "",
        "| setting | value |",
        "| --- | --- |",
    ]
    settings = {
        "base model": base or model.get("path", "?"),
        "LoRA rank / alpha": f"{lora.get('rank', '?')} / {lora.get('alpha', '?')}",
        "DoRA": lora.get("use_dora", False),
        "resolution": ds.get("resolution", "?"),
        "steps": tr.get("max_steps", "?"),
        "batch size × accumulation": f"{tr.get('batch_size', '?')} × {tr.get('gradient_accumulation_steps', 1)}",
        "learning rate": tr.get("learning_rate", "?"),
        "optimizer": tr.get("optimizer", "?"),
        "scheduler": tr.get("lr_scheduler", "?"),
        "precision": model.get("dtype", "?"),
        "quantization": (data.get("memory") or {}).get("quantization", "none"),
        "seed": tr.get("seed", "?"),
    }
    lines += [f"| {k} | {_cell(v)} |" for k, v in settings.items()]
    lines += ["", "## Measured", "", "| figure | value |", "| --- | --- |"]
    measured: dict[str, Any] = {}
    if status is not None:
        measured["state"] = getattr(status.state, "value", status.state)
        measured["steps trained"] = status.step
        if status.seconds_per_step:
            measured["seconds per step"] = f"{status.seconds_per_step:.3g}"
        extra = status.extra or {}
        if extra.get("device"):
            measured["device"] = extra["device"]
        found = extra.get("measured")
        peaks: dict[str, Any] = found if isinstance(found, dict) else {}
        for key, label in (
            ("gpu_allocated_peak_gib", "peak GPU memory allocated (GiB)"),
            ("gpu_reserved_peak_gib", "peak GPU memory reserved (GiB)"),
            ("host_peak_rss_gib", "peak host RAM of the trainer (GiB)"),
        ):
            v = peaks.get(key)
            if isinstance(v, (int, float)):
                measured[label] = f"{v:.2f}"
    loss = _last(metrics, "loss")
    if loss is not None:
        measured["final train loss (last logged step)"] = f"{loss:.4f}"
    eval_loss = _last(evals, "eval_loss")
    if eval_loss is not None:
        measured["final eval loss"] = f"{eval_loss:.4f}"
    lines += [f"| {k} | {_cell(v)} |" for k, v in measured.items()] or ["| (nothing measured yet) | |"]
    return "\n".join(lines) + "\n"


def _prompt_example(widgets: list[dict[str, Any]], trigger: str) -> str:
    text = widgets[-1]["text"] if widgets else (f"a photo of {trigger}" if trigger else "a photo")
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _read_config(run: Path) -> tuple[dict[str, Any] | None, str]:
    from flux2_lora.config.io import read_yaml

    data, issues = read_yaml(run / runs.CONFIG_FILE)
    if not isinstance(data, dict):
        return None, "; ".join(str(i) for i in issues) or "not a config mapping"
    return data, ""


def write_card(run_dir: str | Path) -> Path:
    """Write README.md into the run folder atomically (a temporary file, then a rename)."""
    run = Path(run_dir)
    path = run / CARD_FILE
    tmp = run / f".{CARD_FILE}.tmp"
    try:
        tmp.write_text(card_text(run), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise runs.write_error(f"the model card ({path})", e) from None
    return path
