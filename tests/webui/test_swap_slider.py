"""The swap count (memory.blocks_to_swap) as a slider in the Train tab's form, bounded per variant, and
its memory and time effect in what the estimate panel shows (issue 21, point 5)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from flux2_lora.config.io import load_config, to_dict
from flux2_lora.webui import configs
from flux2_lora.webui.paths import AppPaths
from flux2_lora.webui.schema import form_fields
from flux2_lora.webui.widgets import make_widget


def _spec():
    return next(s for s in form_fields() if s.path == "memory.blocks_to_swap")


def test_swap_count_is_a_slider_bounded_by_each_variants_blocks() -> None:
    spec = _spec()
    # [dev]: 8 double + 48 single blocks; [klein] 9B: 8 + 24; 4B: 5 + 20; two stay as the GPU buffers.
    assert spec.extra["max_by_variant"] == {"dev": 54, "klein-9b": 30, "klein-4b": 23}
    w = make_widget(spec, 0)
    # Over the schema's range (0-64): the rules refuse a count beyond a variant's blocks, saying why.
    assert isinstance(w, gr.Slider) and (w.minimum, w.maximum, w.step) == (0, 64, 1)


def test_the_estimate_panel_shows_what_the_swap_count_saves(tmp_path: Path) -> None:
    paths = AppPaths.create(tmp_path / "runs", [tmp_path])
    base = to_dict(load_config(presets=["dev"])[0])
    swapped = to_dict(load_config(presets=["dev"], overrides=["memory.blocks_to_swap=40"])[0])
    before = configs.estimate(paths, base, "24", with_recommendations=False)["report"]
    after = configs.estimate(paths, swapped, "24", with_recommendations=False)["report"]
    assert after["total_gib"] < before["total_gib"] - 15
    assert after["swap"]["blocks"] == 40 and after["phase_components"]["training"]["swap_buffers"] > 0
    assert any("pinned host memory" in n for n in after["notes"])
    assert after["host"]["phases"]["training"] > before["host"]["phases"]["training"] + 15
    # Its time: 2 copies per swapped block per step, mostly hidden behind the blocks' compute at 1024².
    t0, t1 = before["step_time"], after["step_time"]
    assert t1["gb_per_step"] > 70 and t0["gb_per_step"] == 0
    assert t0["step_s"] <= t1["step_s"] < t0["step_s"] + t1["transfer_s"]
