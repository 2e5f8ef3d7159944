"""Every path a UI request can name goes through the one path check (issue 18, points 1 and 2): sweep
parameters and every base.set key, the presets and template a sweep composes, resume checkpoints, and
ZIPs (never unpacked into a run's folder; an archive inside an archive is refused by name)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_origin

import pytest
from PIL import Image

from flux2_lora.config import SECTIONS
from flux2_lora.webui import monitor
from flux2_lora.webui.actions import Actions
from flux2_lora.webui.paths import AppPaths, PathRefused, is_list_path_field, path_fields
from tests.webui.conftest import tiny_run_config

if TYPE_CHECKING:
    from gradio_client import Client

gradio_client = pytest.importorskip("gradio_client")


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _dataset_zip(path: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("img0.png", _png())
        zf.writestr("img0.txt", "a green square")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def _sweep(**change: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "base": {"presets": ["quickstart"], "set": {"training.max_steps": 2, "training.warmup_steps": 0}},
        "parameters": {"lora.rank": {"values": [4, 8]}},
        "method": "grid",
    }
    spec.update(change)
    return spec


@pytest.fixture
def actions(tmp_path: Path) -> Actions:
    data = tmp_path / "data"
    (data / "photos").mkdir(parents=True)
    (data / "photos" / "a.png").write_bytes(_png())
    return Actions(AppPaths.create(tmp_path / "runs", [data]))


def test_path_fields_are_found_in_the_schema() -> None:
    """Not a hand-made list: every text field the schema gives a path's length or a path's name."""
    fields = path_fields()
    assert fields == {
        "model.path": "model",
        "dataset.path": "data",
        "dataset.reference_path": "data",
        "dataset.mask_path": "data",
        "dataset.extra": "data",  # a list of entries: each entry's path and mask_path
        "validation.eval_folder": "data",
        "validation.references": "image",  # a list of image-path lists
        "output.dir": "output",
    }
    texts = {
        f"{s}.{k}"
        for s, cls in SECTIONS.items()
        for k, i in cls.model_fields.items()
        if i.annotation is str or get_origin(i.annotation) is list
    }
    assert set(fields) <= texts and "dataset.default_caption" not in fields


def _outside(field: str, folder: Path) -> object:
    """A value of ``field`` naming ``folder`` (a list field: as its one item)."""
    if field == "dataset.extra":
        return [{"path": str(folder), "weight": 2}]
    if field == "validation.references":
        return [[str(folder / "secret.png")]]
    return [str(folder)] if is_list_path_field(field) else str(folder)


@pytest.mark.parametrize("field", sorted(f for f, role in path_fields().items() if role != "output"))
def test_sweep_parameters_name_no_path_outside(actions: Actions, field: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(_png())
    values: list[object] = ["demo", str(outside)]
    if is_list_path_field(field):  # a list: each value is a list, each item checked
        values = [[], _outside(field, outside)]
    spec = _sweep(parameters={field: {"values": values}})
    for r in (actions.sweep_plan(spec, ""), actions.start_sweep(spec, "s1", "")):
        assert not r["ok"] and r["errors"][0]["field"] == f"parameters.{field}.values[1]", r
        assert "--data-dir" in r["errors"][0]["message"]
    assert not (actions.paths.runs / "s1").exists()


@pytest.mark.parametrize("field", sorted(f for f, role in path_fields().items() if role != "output"))
def test_every_base_set_path_is_checked(actions: Actions, field: str) -> None:
    etc = _outside(field, Path("/etc"))
    for key_form in ({field: etc}, {field.split(".")[0]: {field.split(".")[1]: etc}}):
        spec = _sweep(base={"presets": ["quickstart"], "set": key_form})
        r = actions.sweep_plan(spec, "")
        assert not r["ok"] and r["errors"][0]["field"] == f"base.set.{field}", (key_form, r)
        assert not actions.start_sweep(spec, "s2", "")["ok"]


def test_a_template_naming_a_path_outside_is_refused(actions: Actions, tmp_path: Path) -> None:
    """A template is saved by the schema alone; its paths are checked where a sweep composes it."""
    cfg = tiny_run_config("t")
    cfg["validation"]["eval_folder"] = str(tmp_path)  # outside the data dir and the runs folder
    assert actions.save_template(cfg, "leaky")["ok"]
    spec = _sweep(base={"template": "leaky"})
    r = actions.sweep_plan(spec, "")
    assert not r["ok"] and r["errors"][0]["field"] == "base.template", r
    assert "validation.eval_folder" in r["errors"][0]["message"]


def test_checked_paths_are_what_the_sweep_runs(actions: Actions) -> None:
    """A data path is written resolved into the spec the sweep process reads, a ZIP as its folder in the
    uploads folder (no trial unpacks anything into its run folder)."""
    from flux2_lora.webui.sweeps import _spec_dict

    photos = actions.paths.data_dirs[0] / "photos"
    z = _dataset_zip(actions.paths.data_dirs[0] / "p.zip")
    spec = _sweep(parameters={"dataset.path": {"values": ["demo", str(photos / ".." / "photos"), str(z)]}})
    assert actions.sweep_plan(spec, "")["ok"]
    data, errors = _spec_dict(actions.paths, spec, unpack=True)
    assert data is not None, errors
    values = data["parameters"]["dataset.path"]["values"]
    assert values[:2] == ["demo", str(photos.resolve())]
    assert Path(values[2]).is_relative_to(actions.paths.uploads) and (Path(values[2]) / "img0.png").is_file()


def test_a_resume_is_only_a_runs_own_checkpoint(actions: Actions) -> None:
    paths = actions.paths
    run = paths.run_dir("r1")
    (run / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-2" / "meta.json").write_text(json.dumps({"step": 2}))
    fake = paths.uploads / "x" / "checkpoints" / "checkpoint-999"
    fake.mkdir(parents=True)
    (fake / "meta.json").write_text(json.dumps({"step": 999}))
    work = run / ".work" / "dataset.path" / "dataset" / "checkpoints" / "checkpoint-9"
    work.mkdir(parents=True)
    (work / "meta.json").write_text("{}")
    assert paths.checkpoint(run, "latest") == "latest"
    assert paths.checkpoint(run, str(run / "checkpoints" / "checkpoint-2")) == str(
        run / "checkpoints" / "checkpoint-2"
    )
    for bad in (str(fake), str(work), str(run), str(run / "checkpoints"), "../x", "checkpoint-999"):
        with pytest.raises(PathRefused, match="checkpoints its trainer wrote"):
            paths.checkpoint(run, bad)
        cfg = tiny_run_config("r1")
        r = actions.start_run(cfg, bad)
        assert not r["ok"] and r["errors"][0]["field"] == "resume", (bad, r)
    assert monitor.job(run, "train") is None and not (run / "config.yaml").exists()  # nothing started


def test_no_run_inside_a_run_or_a_hidden_folder(actions: Actions) -> None:
    """A trainer's .work folder (where it unpacks a ZIP) or a folder below a run is never a run: what a
    trainer resumes from there would not be its own."""
    paths = actions.paths
    run = paths.run_dir("r2")
    run.mkdir()
    (run / "status.json").write_text("{}")
    for bad in ("r2/.work/dataset.path/dataset", "r2/sub", ".hidden", "r2/checkpoints/checkpoint-2"):
        with pytest.raises(PathRefused):
            paths.run_dir(bad)
        assert paths.existing_run(str(paths.runs / bad)) is None
    assert paths.run_dir("sweep/trial-0000") == paths.runs / "sweep" / "trial-0000"  # a sweep is no run


def test_a_zip_dataset_is_unpacked_in_uploads_not_in_the_run(actions: Actions, tmp_path: Path) -> None:
    z = _dataset_zip(actions.paths.data_dirs[0] / "set.zip")
    cfg = tiny_run_config("zipped")
    cfg["dataset"]["path"] = str(z)
    from flux2_lora.webui.jobs import launch_config

    parsed, run_dir, errors = launch_config(actions.paths, cfg)
    assert parsed is not None and run_dir is not None, errors
    unpacked = Path(parsed.dataset.path)
    assert unpacked.is_relative_to(actions.paths.uploads) and (unpacked / "img0.png").is_file()
    assert not (run_dir / ".work").exists()


def test_extra_dataset_entries_are_checked_entry_by_entry(actions: Actions, tmp_path: Path) -> None:
    """dataset.extra is a list of entries: each entry's path and absolute mask_path stay inside the
    allowed folders (the refusal names the entry and field), a ZIP entry is unpacked in uploads like
    dataset.path, a relative mask_path stays relative (inside the entry's folder)."""
    from flux2_lora.webui.jobs import launch_config

    outside = tmp_path / "outside"
    outside.mkdir()
    photos = actions.paths.data_dirs[0] / "photos"
    z = _dataset_zip(actions.paths.data_dirs[0] / "extra.zip")
    cfg = tiny_run_config("extra")
    cfg["dataset"]["extra"] = [{"path": str(photos)}, {"path": str(outside), "weight": 3}]
    parsed, _, errors = launch_config(actions.paths, cfg)
    assert parsed is None and errors[0]["field"] == "dataset.extra[1].path", errors
    assert "--data-dir" in errors[0]["message"]
    assert not actions.start_run(cfg, "")["ok"] and not (actions.paths.runs / "extra").exists()
    cfg["dataset"]["extra"] = [{"path": str(photos), "mask_path": str(outside)}]
    parsed, _, errors = launch_config(actions.paths, cfg)
    assert parsed is None and errors[0]["field"] == "dataset.extra[0].mask_path", errors
    cfg["dataset"]["extra"] = [{"path": str(z), "role": "regularization", "mask_path": "masks"}]
    parsed, _, errors = launch_config(actions.paths, cfg)
    assert parsed is not None, errors
    entry = parsed.dataset.extra[0]
    assert (
        Path(entry.path).is_relative_to(actions.paths.uploads) and (Path(entry.path) / "img0.png").is_file()
    )
    assert entry.mask_path == "masks" and entry.role == "regularization"
    # An entry that is the run's own folder's parent would train on its samples.
    cfg["dataset"]["extra"] = [{"path": str(actions.paths.runs)}]
    parsed, _, errors = launch_config(actions.paths, cfg)
    assert parsed is None and errors[0]["field"] == "output.dir", errors


def test_entries_in_a_sweep_are_checked_and_unpacked(actions: Actions, tmp_path: Path) -> None:
    from flux2_lora.webui.sweeps import _spec_dict

    z = _dataset_zip(actions.paths.data_dirs[0] / "sweep-extra.zip")
    spec = _sweep(base={"presets": ["quickstart"], "set": {"dataset.extra": [{"path": str(tmp_path)}]}})
    r = actions.sweep_plan(spec, "")
    assert not r["ok"] and r["errors"][0]["field"] == "base.set.dataset.extra", r
    assert r["errors"][0]["message"].startswith("dataset.extra[0].path: "), r
    spec = _sweep(base={"presets": ["quickstart"], "set": {"dataset.extra": [{"path": str(z), "weight": 3}]}})
    data, errors = _spec_dict(actions.paths, spec, unpack=True)
    assert data is not None, errors
    (entry,) = data["base"]["set"]["dataset.extra"]
    assert Path(entry["path"]).is_relative_to(actions.paths.uploads) and entry["weight"] == 3


def test_an_archive_inside_an_archive_is_refused_by_name(actions: Actions, tmp_path: Path) -> None:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("checkpoints/checkpoint-999/meta.json", json.dumps({"step": 999}))
    outer = _dataset_zip(tmp_path / "outer.zip", {"inner.zip": inner.getvalue()})
    r = actions.upload_dataset(str(outer))
    assert not r["ok"] and "inner.zip: an archive inside an archive is not unpacked" in r["message"], r
    assert list(actions.paths.uploads.iterdir()) == []  # nothing left of the refused upload
    only = tmp_path / "only.zip"
    with zipfile.ZipFile(only, "w") as zf:
        zf.writestr("nested/inner.tar.gz", b"x")
    typed = actions.paths.data_dirs[0] / "only.zip"
    typed.write_bytes(only.read_bytes())
    r = actions.check_dataset({"dataset": {"path": str(typed)}})
    assert not r["ok"] and "nested/inner.tar.gz: an archive inside an archive" in r["message"], r


def test_hostile_sweep_through_the_api(client: Client, ui_runs: Path) -> None:
    """The issue's case as a client sends it."""
    spec = _sweep(parameters={"dataset.path": {"values": ["/etc"]}})
    r = client.predict(spec, "outside-sweep", "", api_name="/start_sweep")
    assert not r["ok"] and r["errors"][0]["field"] == "parameters.dataset.path.values[0]", r
    assert not (ui_runs / "outside-sweep").exists()
    spec = _sweep(base={"presets": ["quickstart"], "set": {"base": 1, "validation.eval_folder": "/etc"}})
    r = client.predict(spec, "", api_name="/sweep_plan")
    assert not r["ok"] and r["errors"][0]["field"] == "base.set.validation.eval_folder", r
