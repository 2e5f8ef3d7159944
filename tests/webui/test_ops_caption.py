"""Caption images from the UI (API endpoints through gradio_client): the model check that enables the
button, the folders captions may be written in, and `flux2-lora caption` run as a subprocess with a tiny
randomly initialised Qwen2.5-VL (built from config, as tests/test_captioning.py does): existing captions
are kept unless the user chose to overwrite them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

from tests.helpers import wait_for

if TYPE_CHECKING:
    from gradio_client import Client

pytest.importorskip("gradio_client")


def _dataset(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, color in (("a.png", (200, 30, 30)), ("b.png", (30, 200, 30)), ("c.png", (30, 30, 200))):
        Image.new("RGB", (64, 48), color).save(root / name)
    (root / "c.txt").write_text("my own caption\n")
    return root


def test_the_ui_default_is_the_captioners() -> None:
    from flux2_lora.captioning import DEFAULT_MODEL
    from flux2_lora.webui.ops import DEFAULT_CAPTION_MODEL

    assert DEFAULT_CAPTION_MODEL == DEFAULT_MODEL


def test_the_model_check_says_why_captioning_cannot_run(
    client: Client, ui_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = ui_data / "not-a-model"
    empty.mkdir(exist_ok=True)
    r = client.predict(str(empty), api_name="/caption_model")
    assert not r["ok"] and "config.json" in r["message"], r
    r = client.predict(str(tmp_path), api_name="/caption_model")  # outside the allowed folders
    assert not r["ok"] and "outside" in r["message"], r
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the UI runs in this process
    r = client.predict("nobody-here/no-such-captioner", api_name="/caption_model")
    assert not r["ok"] and "HF_HUB_OFFLINE" in r["message"], r
    r = client.predict("demo", api_name="/caption_model")
    assert not r["ok"]


def test_captions_are_written_only_inside_the_data_folders(
    client: Client, ui_data: Path, ui_runs: Path, tmp_path: Path
) -> None:
    model = ui_data / "fake-model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    outside = _dataset(tmp_path / "ds")
    for path in (str(outside), str(ui_runs), "demo", ""):
        r = client.predict(path, str(model), "keep", "", ".txt", "cpu", api_name="/caption_start")
        assert not r["ok"] and r["errors"][0]["field"] == "dataset.path", (path, r)
    inside = _dataset(ui_data / "ds-refusals")
    r = client.predict(str(inside), str(model), "prefix", "", ".txt", "cpu", api_name="/caption_start")
    assert not r["ok"] and r["errors"][0]["field"] == "dataset.trigger_word", r
    r = client.predict(str(inside), str(model), "append", "", ".txt", "cpu", api_name="/caption_start")
    assert not r["ok"] and r["errors"][0]["field"] == "mode", r
    r = client.predict(str(inside), str(model), "keep", "", "txt/../x", "cpu", api_name="/caption_start")
    assert not r["ok"] and r["errors"][0]["field"] == "dataset.caption_extension", r
    assert sorted(p.name for p in inside.iterdir()) == ["a.png", "b.png", "c.png", "c.txt"]


def _captioned(client: Client, dataset: Path) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def ended() -> bool:
        last.update(client.predict(str(dataset), api_name="/caption_status"))
        return last["state"] in ("done", "failed")

    assert wait_for(ended, 600, 0.2), last
    return last


@pytest.mark.slow
def test_caption_keeps_existing_captions_unless_told_to_overwrite(client: Client, ui_data: Path) -> None:
    from tests.test_captioning import build_tiny_vl_model

    model = build_tiny_vl_model(ui_data / "tiny-qwen-vl")
    ds = _dataset(ui_data / "ds-caption")
    assert client.predict(str(model), api_name="/caption_model")["ok"]
    r = client.predict(str(ds), str(model), "keep", "", ".txt", "cpu", api_name="/caption_start")
    assert r["ok"], r
    # A second captioning of the same folder is refused while the first runs (it takes seconds to load).
    busy = client.predict(str(ds), str(model), "keep", "", ".txt", "cpu", api_name="/caption_start")
    assert not busy["ok"] and "being captioned" in busy["errors"][0]["message"], busy
    s = _captioned(client, ds)
    assert s["state"] == "done", s
    assert "2 to caption, 1 kept" in s["output"] and "captions written: 2" in s["output"], s
    assert s["progress"].startswith("captioning:") and "2/2" in s["progress"], s
    assert (ds / "c.txt").read_text() == "my own caption\n"
    assert (ds / "a.txt").read_text().strip() and (ds / "b.txt").read_text().strip()

    r = client.predict(str(ds), str(model), "overwrite", "sks", ".txt", "cpu", api_name="/caption_start")
    assert r["ok"], r
    s = _captioned(client, ds)
    assert s["state"] == "done" and "captions written: 3" in s["output"], s
    assert (ds / "c.txt").read_text().startswith("sks")


def test_an_uploaded_dataset_may_be_captioned(ui_runs: Path, ui_data: Path) -> None:
    from flux2_lora.webui.ops import _caption_dataset
    from flux2_lora.webui.paths import AppPaths, PathRefused

    paths = AppPaths.create(ui_runs, [ui_data])
    upload = paths.uploads / "ds-unpacked"
    upload.mkdir(exist_ok=True)
    assert _caption_dataset(paths, str(upload)) == upload.resolve()
    run = paths.runs / "some-run"
    run.mkdir(exist_ok=True)
    for refused in (paths.uploads, run, paths.runs):
        with pytest.raises(PathRefused):
            _caption_dataset(paths, str(refused))
