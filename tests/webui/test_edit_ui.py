"""Edit LoRAs through the UI's API (gradio_client), as a script would: the dataset check's pairs with
thumbnails (metadata.jsonl and reference-folder layouts), reference paths confined to the allowed folders,
an edit run's samples as reference | sample, Test LoRA with a reference, and `generate --reference`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

from flux2_lora import runs
from flux2_lora.webui import edit_view
from flux2_lora.webui.paths import AppPaths
from tests.helpers import cli, wait_for

if TYPE_CHECKING:
    from gradio_client import Client

pytest.importorskip("gradio_client")

COLOURS = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 200, 40), (150, 60, 180), (30, 180, 190)]


def reference_folder_dataset(root: Path) -> Path:
    """Six targets in ``root``, their references in ``root/refs`` by stem: one reference each, two (_0, _1)
    for t1, none for t5, and one orphan reference."""
    (root / "refs").mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (64, 64), colour).save(root / f"t{i}.png")
        (root / f"t{i}.txt").write_text(f"make it colour {i}")
        if i == 1:
            for k in range(2):
                Image.new("RGB", (64, 64), (k * 100, 90, 90)).save(root / "refs" / f"t1_{k}.png")
        elif i != 5:
            Image.new("RGB", (64, 64), (120, 120, 120)).save(root / "refs" / f"t{i}.png")
    Image.new("RGB", (64, 64), (0, 0, 0)).save(root / "refs" / "nobody.png")
    return root


def tiny_edit_config(name: str, steps: int = 4) -> dict[str, Any]:
    """The quickstart-edit demo shrunk to a few steps, sampling every 2 with 2 denoising steps."""
    from flux2_lora.webui import configs

    cfg = configs.apply_preset(configs.default_dict(), "quickstart-edit")["config"]
    cfg["training"].update(max_steps=steps, warmup_steps=0)
    cfg["validation"].update(enabled=True, every_n_steps=2, num_inference_steps=2, eval_images=0)
    cfg["output"].update(dir=f"runs/{name}", checkpoint_every=2)
    cfg["logging"].update(tensorboard=False, log_every=1)
    return cfg


def _check(client: Client, **dataset: Any) -> dict[str, Any]:
    return dict(client.predict({"dataset": {"resolution": 64, **dataset}}, api_name="/check_dataset"))


def test_the_edit_demo_check_shows_pairs_as_thumbnails(client: Client, ui_runs: Path) -> None:
    r = _check(client, path="demo-edit", reference_max_pixels=4096)
    assert r["ok"], r
    refs = r["report"]["references"]
    assert refs["layout"] == "metadata" and refs["pairs"] == 16
    assert refs["references_per_target"] == {"1": 12, "2": 4} and r["max_references"] == 2
    pairs = r["pairs"]
    assert len(pairs) == edit_view.PAIR_PREVIEWS
    two = next(p for p in pairs if len(p["references"]) == 2)
    assert two["caption"].startswith("paint the") and two["target"].startswith("targets/")
    for p in pairs:  # made by the UI in its own folder of the runs folder, and served from there
        thumb = Path(p["thumbnail"])
        assert thumb.is_relative_to(ui_runs / "generated" / edit_view.PAIRS_FOLDER)
        with Image.open(thumb) as im:
            # reference(s) → target side by side at one height
            assert im.height == edit_view.THUMB_HEIGHT and im.width > im.height * (len(p["references"]) + 1)
    assert client.predict(pairs[0]["thumbnail"], api_name="/download_file")


def test_a_reference_folder_pairs_by_stem_with_counts_and_orphans(client: Client, ui_data: Path) -> None:
    root = reference_folder_dataset(ui_data / "edit-folder")
    r = _check(client, path=str(root), reference_path="refs")
    assert r["ok"], r
    refs = r["report"]["references"]
    assert refs["layout"] == "folder" and refs["pairs"] == 5
    assert refs["targets_without_references"] == ["t5.png"] and refs["orphan_references"] == ["nobody.png"]
    assert refs["references_per_target"] == {"1": 4, "2": 1}
    assert [p["target"] for p in r["pairs"]] == ["t0.png", "t1.png", "t2.png", "t3.png", "t4.png"]
    assert r["pairs"][1]["references"] == ["refs/t1_0.png", "refs/t1_1.png"]
    assert all(Path(p["thumbnail"]).is_file() for p in r["pairs"])
    text = edit_view.pairs_markdown(r)
    assert "**5** pairs" in text and "`nobody.png`" in text and "`t5.png`" in text
    # A text-to-image check of the same folder: no pairs, nothing said about them.
    plain = _check(client, path=str(root))
    assert "pairs" not in plain and edit_view.pairs_markdown(plain) == ""


def test_reference_paths_stay_inside_the_allowed_folders(
    client: Client, ui_data: Path, ui_runs: Path, tmp_path: Path
) -> None:
    root = reference_folder_dataset(ui_data / "edit-confined")
    outside = reference_folder_dataset(tmp_path / "outside")
    r = _check(client, path=str(root), reference_path=str(outside / "refs"))
    assert not r["ok"] and r["field"] == "dataset.reference_path" and "--data-dir" in r["message"]
    # A relative folder climbing out of the dataset folder: the scan's own error, no pair made.
    r = _check(client, path=str(root), reference_path="../../")
    assert not r.get("pairs")
    problems = r["report"]["problems"]["dataset.reference_path (../../)"]
    assert "leads outside the dataset folder" in problems[0]["message"], problems
    cfg = tiny_edit_config("confined")
    cfg["validation"]["references"] = [[str(outside / "t0.png")]]
    s = client.predict(cfg, "", False, "", api_name="/start_run")
    assert not s["ok"] and s["errors"][0]["field"] == "validation.references[0][0]", s
    assert not (ui_runs / "confined").exists()


def test_a_sweep_checks_validation_references_too(tmp_path: Path) -> None:
    """validation.references is a list field, not a text path field: the sweep checks it by itself, in
    base.set and in a parameter's values, and writes it resolved."""
    from flux2_lora.webui.actions import Actions

    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (64, 64)).save(data / "in.png")
    actions = Actions(AppPaths.create(tmp_path / "runs", [data]))
    base: dict[str, Any] = {"presets": ["quickstart-edit"], "set": {"training.max_steps": 2}}
    inside, outside = [[str(data / ".." / "data" / "in.png")]], [["/etc/hostname"]]
    spec = {"base": base, "parameters": {"lora.rank": {"values": [4, 8]}}, "method": "grid"}
    bad = {**spec, "base": {**base, "set": {**base["set"], "validation.references": outside}}}
    r = actions.sweep_plan(bad, "")
    assert not r["ok"] and r["errors"][0]["field"] == "base.set.validation.references", r
    assert "validation.references[0][0]" in r["errors"][0]["message"]
    bad = {**spec, "parameters": {"validation.references": {"values": [inside, outside]}}}
    r = actions.sweep_plan(bad, "")
    assert not r["ok"] and r["errors"][0]["field"] == "parameters.validation.references.values[1]", r
    from flux2_lora.webui.sweeps import _spec_dict

    good = {**spec, "base": {**base, "set": {**base["set"], "validation.references": inside}}}
    out, errors = _spec_dict(actions.paths, good)
    assert out is not None, errors
    assert out["base"]["set"]["validation.references"] == [[str((data / "in.png").resolve())]]


def test_sample_references_fall_back_to_the_run_config(tmp_path: Path) -> None:
    """A run whose index has no references (an older trainer) pairs its samples from
    validation.references: prompt n's images for samples n·num_samples … (n+1)·num_samples − 1."""
    paths = AppPaths.create(tmp_path / "runs", [tmp_path / "data"])
    run = paths.runs / "old"
    (run / "samples").mkdir(parents=True)
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (64, 64), (10, 20, 30)).save(data / f"{name}.png")
    (run / runs.CONFIG_FILE).write_text(
        f"validation:\n  num_samples: 2\n  references:\n  - [{data / 'a.png'}]\n  - [{data / 'b.png'}]\n"
    )
    samples = []
    for i in range(4):
        f = run / "samples" / f"step000002_{i:02d}.png"
        Image.new("RGB", (64, 64), (200, 0, 0)).save(f)
        samples.append({"step": 2, "prompt": "p", "file": str(f), "index": i})
    refs = edit_view.sample_references(run, samples)
    assert refs == [[str(data / "a.png")]] * 2 + [[str(data / "b.png")]] * 2
    shown = edit_view.with_pairs(paths, run, samples)
    assert all(Path(s["pair"]).is_file() for s in shown)
    items = edit_view.gallery_items(shown)
    assert all(f == s["pair"] and "reference | sample" in c for (f, c), s in zip(items, shown))
    # A reference outside what the UI may read is left out of the picture: the sample alone.
    (run / runs.CONFIG_FILE).write_text("validation:\n  references:\n  - [/etc/hostname]\n")
    alone = edit_view.with_pairs(paths, run, samples[:1])
    assert "pair" not in alone[0] and edit_view.gallery_items(alone)[0][0] == samples[0]["file"]


def test_generate_reference_flag_refuses_bad_images_by_name(tmp_path: Path) -> None:
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (16, 16)).save(tiny)
    wide = tmp_path / "wide.png"
    Image.new("RGB", (80, 64)).save(wide)  # 64x48 under a 4096-pixel cap: below FLUX.2's minimum
    cases = [
        (tmp_path / "missing.png", "does not exist", []),
        (bad, "not an image", []),
        (tiny, "64 px", []),
        (wide, "would be 64x48", ["--reference-max-pixels", "4096"]),
    ]
    for ref, words, extra in cases:
        argv = [
            "generate",
            "--prompt",
            "x",
            "--reference",
            str(ref),
            *extra,
            "--out",
            str(tmp_path / "o.png"),
        ]
        p = cli(*argv)
        assert p.returncode == 1 and "--reference:" in p.stderr and words in p.stderr, p.stderr
        assert not (tmp_path / "o.png").exists()


@pytest.mark.slow
def test_an_edit_run_shows_reference_and_sample_and_test_lora_takes_a_reference(
    client: Client, ui_runs: Path, ui_data: Path
) -> None:
    import numpy as np

    r = client.predict(tiny_edit_config("edit-api"), "", False, "", api_name="/start_run")
    assert r["ok"], r
    run_dir = r["run_dir"]
    last: dict[str, Any] = {}

    def finished() -> bool:
        last.update(client.predict(run_dir, api_name="/run_status"))
        return bool(last.get("final"))

    assert wait_for(finished, timeout=600, interval=0.5), last
    assert last["state"] == "finished", last.get("log")
    samples = last["samples"]
    assert [s["step"] for s in samples] == [2, 4]
    for s in samples:
        # The trainer recorded the images each sample edits (the first pair's: the demo's 1 reference).
        assert len(s["references"]) == 1 and s["references"][0].endswith("_0.png")
        with Image.open(s["pair"]) as pair, Image.open(s["file"]) as sample:
            assert pair.height == edit_view.SAMPLE_HEIGHT and pair.width > 2 * pair.height > sample.width
    index = runs.read_jsonl(Path(run_dir) / runs.SAMPLES_INDEX)
    assert all(line["references"] == s["references"] for line, s in zip(index, samples))

    lora = last["lora"]
    d = client.predict(lora, api_name="/run_defaults")
    assert d["references"] == samples[0]["references"] and d["reference_max_pixels"] == 4096
    prompt = d["prompt"]
    assert prompt and prompt == samples[0]["prompt"]  # the first pair's instruction, as the run sampled
    with_ref = client.predict(lora, prompt, 1.0, 2, 0, 64, 1.0, d["references"], api_name="/generate")
    plain = client.predict(lora, prompt, 1.0, 2, 0, 64, 1.0, None, api_name="/generate")
    assert with_ref["ok"] and plain["ok"], (with_ref, plain)
    assert with_ref["references"] == d["references"] and plain["references"] == []
    a, b = (np.asarray(Image.open(x["image"]), dtype=float) for x in (with_ref, plain))
    assert a.shape == b.shape == (64, 64, 3) and np.abs(a - b).max() > 0  # the reference changes the edit
    # An uploaded reference is stored in the uploads folder (once per content) and used from there.
    upload = ui_data / "upload.png"
    Image.new("RGB", (96, 96), (10, 200, 10)).save(upload)
    paths = AppPaths.create(ui_runs, [ui_data])
    stored = edit_view.references_of(paths, str(upload), "ignored when there is an upload")
    assert stored == edit_view.references_of(paths, str(upload), "")
    assert Path(stored[0]).is_relative_to(ui_runs / "uploads" / edit_view.REFERENCE_UPLOADS)
    g = client.predict(lora, prompt, 1.0, 2, 0, 64, 1.0, stored, api_name="/generate")
    assert g["ok"] and g["references"] == stored, g
    refused = client.predict(lora, prompt, 1.0, 2, 0, 64, 1.0, ["/etc/hostname"], api_name="/generate")
    assert not refused["ok"] and refused["field"] == "references[0]", refused
    with pytest.raises(ValueError, match="cannot be read"):
        (ui_data / "bad.png").write_text("not an image")
        edit_view.references_of(paths, str(ui_data / "bad.png"), "")
