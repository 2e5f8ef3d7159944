"""Several datasets (dataset.extra) outside the trainer: inheritance of unset fields, the estimate sized at
the largest entry's resolution, `dataset check --config` and the UI's check per entry, the form's YAML."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from flux2_lora.assess import assess
from flux2_lora.config.io import load_config
from flux2_lora.data.entries import dataset_parts, largest_resolution


def _folder(path: Path, n: int, captions: int | None = None, masks: int = 0) -> Path:
    path.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (64, 64)).save(path / f"im{i}.png")
        if i < (n if captions is None else captions):
            (path / f"im{i}.txt").write_text(f"image {i}", encoding="utf-8")
    if masks:
        (path / "masks").mkdir()
        for i in range(masks):
            Image.new("L", (64, 64), 255).save(path / "masks" / f"im{i}.png")
    return path


def test_unset_entry_fields_are_the_sections() -> None:
    config, _ = load_config(
        overrides=[
            "dataset.resolution=512",
            "dataset.trigger_word=sks",
            "dataset.caption_dropout=0.1",
            "dataset.repeats=2",
            "dataset.extra=[{path: a, resolution: 1024, trigger_word: ''}, {path: b, role: regularization},"
            " {path: c, repeats: 5, caption_dropout: 0}]",
        ]
    )
    parts = dataset_parts(config.dataset)
    got = [
        (
            p.label,
            p.role,
            p.settings.resolution,
            p.settings.trigger_word,
            p.settings.repeats,
            p.settings.caption_dropout,
        )
        for p in parts
    ]
    assert got == [
        ("dataset", "train", 512, "sks", 2, 0.1),
        ("dataset.extra[0]", "train", 1024, "", 2, 0.1),
        ("dataset.extra[1]", "regularization", 512, "", 2, 0.1),  # no trigger for regularization
        ("dataset.extra[2]", "train", 512, "sks", 5, 0.0),
    ]
    assert largest_resolution(config) == 1024


def test_an_entry_with_a_larger_resolution_drives_the_activation_peak() -> None:
    base = ["dataset.resolution=512", "training.max_steps=10"]
    small = assess(load_config(presets=["klein-4b"], overrides=base)[0], gpu="80").report
    mixed_cfg = load_config(
        presets=["klein-4b"], overrides=[*base, "dataset.extra=[{path: demo-x, resolution: 1024}]"]
    )
    mixed = assess(mixed_cfg[0], gpu="80").report
    big = assess(load_config(presets=["klein-4b"], overrides=["dataset.resolution=1024"])[0], gpu="80").report
    assert small is not None and mixed is not None and big is not None
    assert mixed["image_tokens"] == big["image_tokens"] == 4 * small["image_tokens"]
    assert mixed["phases"]["training"] == pytest.approx(big["phases"]["training"])
    assert mixed["phases"]["training"] > small["phases"]["training"]
    assert mixed_cfg[0].dataset.resolution == 512  # the config itself is unchanged


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    return subprocess.run(
        [sys.executable, "-m", "flux2_lora.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
    )


def test_dataset_check_reports_each_entry(tmp_path: Path) -> None:
    main = _folder(tmp_path / "main", 3, captions=2)
    reg = _folder(tmp_path / "reg", 4, masks=1)
    entries = f"dataset.extra=[{{path: '{reg}', role: regularization, mask_path: masks, weight: 2}}]"
    r = _cli("dataset", "check", "--set", f"dataset.path={main}", "--set", entries, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)["entries"]
    assert [
        (e["entry"], e["role"], e["weight"], e["num_images"], e["num_missing_captions"]) for e in out
    ] == [
        ("dataset", "train", 1.0, 3, 1),
        ("dataset.extra[0]", "regularization", 2.0, 4, 0),
    ]
    assert out[0]["masks"] is None
    assert out[1]["masks"]["with_mask"] == 1 and out[1]["masks"]["images"] == 4
    text = _cli("dataset", "check", "--set", f"dataset.path={main}", "--set", entries)
    assert "dataset.extra[0] (regularization, weight 2" in text.stdout
    assert "masks (masks): 1 of 4 images have one" in text.stdout
    missing = f"dataset.extra=[{{path: '{tmp_path / 'nothing'}'}}]"
    r = _cli("dataset", "check", "--set", f"dataset.path={main}", "--set", missing)
    assert r.returncode == 1 and "dataset.extra[0].path" in r.stderr
    r = _cli("dataset", "check", str(reg), "--mask-path", "masks")
    assert r.returncode == 0 and "masks (masks): 1 of 4 images have one" in r.stdout


def test_the_ui_check_shows_each_entry(tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    from flux2_lora.webui import render
    from flux2_lora.webui.datasets import check_dataset
    from flux2_lora.webui.paths import AppPaths

    data = tmp_path / "data"
    main, more = _folder(data / "main", 2), _folder(data / "more", 3, captions=1, masks=2)
    paths = AppPaths.create(tmp_path / "runs", [data])
    extra = [{"path": str(more), "mask_path": "masks", "resolution": 512}, {"path": str(tmp_path)}]
    r = check_dataset(paths, {"dataset": {"path": str(main), "extra": extra}})
    first, second = r["entries"]
    assert (first["entry"], first["num_images"], first["num_missing_captions"]) == ("dataset.extra[0]", 3, 2)
    assert first["masks"]["with_mask"] == 2 and first["resolution"] == 512
    assert second["error"].startswith("dataset.extra[1].path: ") and "--data-dir" in second["error"]
    assert r["ok"] and not r["entries_ok"]
    text = render.dataset_markdown(r)
    assert "**dataset.extra[0]** (train)" in text and "masks: 2 of 3 images" in text
    assert "✘ **dataset.extra[1]**" in text
    bad = check_dataset(paths, {"dataset": {"path": str(main), "extra": [{"path": str(more), "role": "x"}]}})
    assert bad["entries"][0]["error"].startswith("dataset.extra[0].role: ")


def test_the_form_edits_entries_as_yaml() -> None:
    pytest.importorskip("gradio")
    from flux2_lora.webui.schema import form_fields, from_widget, to_widget

    spec = next(s for s in form_fields() if s.path == "dataset.extra")
    config, _ = load_config(
        overrides=["dataset.extra=[{path: a, weight: 3}, {path: b, role: regularization}]"]
    )
    text = to_widget(spec, config.model_dump()["dataset"]["extra"])
    assert text.splitlines() == [
        "- {path: a, role: train, weight: 3.0, mask_path: ''}",
        "- {path: b, role: regularization, weight: 1.0, mask_path: ''}",
    ]
    back = from_widget(spec, text)
    again, _ = load_config(overrides=[])
    assert [e["path"] for e in back] == ["a", "b"]
    from flux2_lora.config.io import validate_dict

    parsed, _ = validate_dict({"dataset": {"extra": back}})
    assert parsed is not None and parsed.dataset.extra == config.dataset.extra
    assert again.dataset.extra == []
    # Text that is not YAML reaches validation, which names the field.
    _, issues = validate_dict({"dataset": {"extra": from_widget(spec, "- {path: a")}})
    assert issues and issues[0].path == "dataset.extra"


def test_a_run_inside_an_entry_folder_is_refused(tmp_path: Path) -> None:
    from flux2_lora.config.io import ConfigError

    more = _folder(tmp_path / "more", 1)
    with pytest.raises(ConfigError, match=r"output.dir: is inside dataset.extra\[0\].path"):
        load_config(overrides=[f"dataset.extra=[{{path: '{more}'}}]", f"output.dir={more / 'run'}"])
