"""The form and what the page renders, without a browser: labels, widgets, estimates, monitor pieces."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

from flux2_lora.config import TrainConfig
from flux2_lora.memory import local_gpu
from flux2_lora.webui import configs, render
from flux2_lora.webui.paths import AppPaths
from flux2_lora.webui.schema import form_fields, human_number
from flux2_lora.webui.tabs.runs import memory_frame
from flux2_lora.webui.widgets import Form, make_widget


def test_labels_read_as_words_people_use() -> None:
    labels = {s.path: s.label for s in form_fields()}
    assert labels["lora.use_dora"] == "DoRA" and labels["memory.vae_slicing"] == "VAE slicing"
    assert labels["memory.cpu_offload"].startswith("CPU offload") and labels["output.dir"] == "Output folder"
    for path, label in labels.items():
        for raw in ("Lora", "Vae", "Cpu", "Gpu", "Dir", "Wandb", "Comfyui"):
            assert raw not in label.split(), (path, label)
    from flux2_lora.config import SECTIONS
    from flux2_lora.webui.schema import SECTION_TITLES

    assert set(SECTION_TITLES) == set(SECTIONS)  # every section of the form has a title in words
    seed = next(s for s in form_fields() if s.path == "training.seed")
    assert seed.bounds_text() == "0 – 4,294,967,295"
    assert human_number(1e-6) == "1e-06" and human_number(1_000_000.0) == "1,000,000"


def test_number_widgets_accept_every_value_the_schema_accepts() -> None:
    """No widget range narrower than the schema: the schema's validation alone decides (and says why)."""
    with gr.Blocks():
        for spec in form_fields():
            w = make_widget(spec, spec.default)
            if spec.extra.get("slider"):  # the swap count (issue 21): a slider over the schema's range
                assert isinstance(w, gr.Slider) and (w.minimum, w.maximum) == (spec.minimum, spec.maximum)
                continue
            if spec.kind in ("int", "float"):
                assert isinstance(w, gr.Number), spec.path
                assert w.minimum is None and w.maximum is None, spec.path
    lr = next(s for s in form_fields() if s.path == "training.learning_rate")
    with gr.Blocks():
        assert make_widget(lr, 1e-4).step <= 1e-5  # the arrows never turn 1e-4 into 1


def test_form_finds_widgets_by_field_path() -> None:
    with gr.Blocks():
        form = Form()
        for spec in form_fields():
            form.add(spec, spec.default)
    config = configs.initial_dict()
    updates = form.updates(config)
    data = dict(updates.items())
    assert form.config(data)["lora"]["rank"] == config["lora"]["rank"]
    assert form.config(data) == TrainConfig.model_validate(config).model_dump(mode="json")


def test_host_ram_is_estimated_for_the_device_the_verdict_is_about(tmp_path: Path) -> None:
    paths = AppPaths.create(tmp_path / "runs", [tmp_path])
    dev = configs.apply_preset({}, "dev")["config"]
    on_gpu = configs.estimate(paths, dev, "40", with_recommendations=False)
    assert on_gpu["report"]["host"]["device"] == "gpu"
    cpu = configs.estimate(
        paths, {**dev, "model": {**dev["model"], "device": "cpu"}}, "40", with_recommendations=False
    )
    assert cpu["report"]["host"]["device"] == "cpu"
    assert cpu["report"]["host"]["peak_gib"] > on_gpu["report"]["host"]["peak_gib"]
    assert "CPU training" in render.verdict_html(cpu, "x")
    if local_gpu() is None:  # Start here would train on this machine's CPU: said beside the GPU verdict
        assert on_gpu["report"]["here"]["device"] == "cpu"
        assert "no GPU found" in render.verdict_html(on_gpu, "x")


def test_monitor_messages_use_the_ui_words() -> None:
    html = render.status_html(
        {
            "state": "stopped",
            "step": 3,
            "total_steps": 8,
            "message": "stopped at step 3; resume with --resume latest",
        }
    )
    assert "--resume" not in html and "press Resume" in html and 'data-state="stopped"' in html
    assert "Pre-flight running" in render.status_html({"state": "none", "preflight": {"running": True}})


def test_preflight_panel_shows_progress_then_measured_against_estimated() -> None:
    running = render.preflight_html({"running": True, "output": "loading\nstep 3 of 10"})
    assert 'data-state="running"' in running and "step 3 of 10" in running
    done = render.preflight_html(
        {
            "result": {
                "device": "cpu",
                "dtype": "torch.float32",
                "seconds_per_step": 0.05,
                "load_and_cache_s": 4.0,
                "eta_s": 30,
                "max_steps": 200,
                "measured": {"gpu_allocated_peak_gib": None, "host_peak_rss_gib": 0.6},
                "estimate": {"allocated_peak_gib": 0.3, "host_peak_gib": 0.56},
            }
        }
    )
    assert 'data-state="done"' in done and "measured" in done and "estimated" in done and "614 MiB" in done


def test_memory_chart_compares_like_with_like() -> None:
    cpu_metrics = [
        {"step": 1, "gpu_mem_gib": None, "rss_gib": 0.5},
        {"step": 2, "gpu_mem_gib": None, "rss_gib": 0.6},
    ]
    frame = memory_frame(cpu_metrics, {"allocated_peak_gib": 0.3, "host_peak_gib": 0.55})
    assert set(frame["series"]) == {"host RSS (measured)", "host peak (estimate)"}  # no GPU line on a CPU run
    gpu_metrics = [{"step": 1, "gpu_mem_gib": 10.0, "rss_gib": 3.0}]
    series = set(memory_frame(gpu_metrics, {"allocated_peak_gib": 11.0, "host_peak_gib": 4.0})["series"])
    assert {"GPU allocated (measured)", "GPU allocated (estimate)"} <= series
    assert str(frame["GiB"].dtype) == "float64"


@pytest.mark.parametrize("name", ["fast", "high-quality", "low-vram", "character", "style", "concept"])
def test_presets_from_defaults_keep_model_data_and_output(name: str) -> None:
    mine = configs.apply_preset({}, "klein-9b")["config"]
    mine["dataset"].update(path="/data/me", trigger_word="zzz")
    mine["output"]["dir"] = "runs/mine"
    r = configs.apply_preset(mine, name)
    c = r["config"]
    assert (
        c["model"] == mine["model"]
        and c["dataset"]["path"] == "/data/me"
        and c["output"]["dir"] == "runs/mine"
    )
    assert all(ch["old"] != ch["new"] for ch in r["changes"])


def test_the_gpu_defaults_to_the_local_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from flux2_lora import memory

    card = memory.Gpu("local: NVIDIA H200", 139.8)
    from flux2_lora import assess
    from flux2_lora.memory import report

    for module in (memory, assess, report):  # each holds its own reference to the function
        monkeypatch.setattr(module, "local_gpu", lambda: card)
    assert configs.gpu_choices()[0] == card.name
    r = configs.estimate(AppPaths.create(tmp_path / "runs", [tmp_path]), {}, None, with_recommendations=False)
    assert r["report"]["gpu"]["name"] == card.name and "here" not in r["report"]
