"""Hostile requests to the UI: nothing runs, nothing outside the allowed folders is read, nothing is deleted."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from flux2_lora.webui import monitor
from flux2_lora.webui.actions import Actions
from flux2_lora.webui.paths import AppPaths, PathRefused, parse_size, resolve_inside

if TYPE_CHECKING:  # the test skips where these are not installed
    from gradio_client import Client


gradio_client = pytest.importorskip("gradio_client")


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _evil_zip(path: Path, marker: Path) -> Path:
    """A valid little dataset that also carries a run's checkpoint whose scheduler state is a pickle bomb."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("img0.png", _png())
        zf.writestr("img0.txt", "a red square, sks style")
        ck = "checkpoints/checkpoint-999/"
        zf.writestr(ck + "scheduler.pt", pickle.dumps(_Payload(marker)))
        zf.writestr(ck + "optimizer.pt", pickle.dumps(_Payload(marker)))
        zf.writestr(ck + "meta.json", json.dumps({"step": 999}))
        zf.writestr("status.json", json.dumps({"state": "stopped", "step": 999, "total_steps": 1000}))
        zf.writestr("config.yaml", "output:\n  dir: runs/evil\n")
    return path


def test_uploaded_checkpoint_never_runs(client: Client, ui_runs: Path, tmp_path: Path) -> None:
    """Issue 10's code execution: upload → check → start with resume. The upload folder can never be a run's
    output folder, so no trainer ever sees the pickle; the marker file proves nothing ran."""
    marker = tmp_path / "pwned"
    up = client.predict(
        gradio_client.handle_file(str(_evil_zip(tmp_path / "evil.zip", marker))), api_name="/upload_dataset"
    )
    assert up["ok"], up
    ds = Path(up["dataset_dir"])
    assert (
        ds.is_relative_to(ui_runs / "uploads") and (ds / "checkpoints/checkpoint-999/scheduler.pt").is_file()
    )
    check = client.predict({"dataset": {"path": str(ds), "resolution": 64}}, api_name="/check_dataset")
    assert check["ok"] and check["num_images"] == 1, check
    from tests.webui.conftest import tiny_run_config

    rel = ds.relative_to(ui_runs)
    for out in (str(ds), str(ds.parent), f"runs/{rel}", str(rel), str(ui_runs / "uploads")):
        cfg = tiny_run_config("unused")
        cfg["output"]["dir"] = out
        r = client.predict(cfg, "latest", api_name="/start_run")
        assert not r["ok"] and r["errors"][0]["field"] == "output.dir", (out, r)
        assert not client.predict(cfg, api_name="/preflight")["ok"]
    for run in (str(ds), str(ds.parent)):
        assert not client.predict(run, api_name="/resume_run")["ok"]
    assert not any(Path(k.out_path).parent.is_relative_to(ui_runs / "uploads") for k in monitor.jobs())
    assert not marker.exists()
    # Listing runs never reads the upload's status.json as a run.
    assert all("uploads" not in r["run_dir"] for r in client.predict(api_name="/list_runs"))


def test_paths_outside_the_allowed_folders_are_refused(client: Client, ui_data: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(_png())
    (ui_data / "link").symlink_to(outside)  # inside the data dir by name, outside once followed
    for path in ("/etc", str(outside), str(ui_data / "link"), str(ui_data / ".." / outside.name)):
        r = client.predict(
            {"dataset": {"path": path, "caption_extension": ".conf"}}, api_name="/check_dataset"
        )
        assert not r["ok"] and r["field"] == "dataset.path" and "--data-dir" in r["message"], (path, r)
        assert "report" not in r
        e = client.predict({"dataset": {"path": path}}, "", api_name="/estimate")
        m = client.predict({"model": {"path": path}}, "", api_name="/estimate")
        assert "model.path" in {x["field"] for x in m["errors"]}
        # The estimate names the refused dataset as an error (and still sizes the run).
        refused = [x for x in e["errors"] if x["field"] == "dataset.path"]
        assert refused and "--data-dir" in refused[0]["message"] and e["available"], e
    inside = ui_data / "photos"
    inside.mkdir()
    (inside / "a.png").write_bytes(_png())
    r = client.predict({"dataset": {"path": str(inside), "resolution": 64}}, api_name="/check_dataset")
    assert r["ok"] and r["num_images"] == 1


def test_uploads_get_a_fresh_folder_and_delete_nothing(client: Client, ui_runs: Path, tmp_path: Path) -> None:
    keep = ui_runs / "uploads" / "dataset"  # where the old UI unpacked every upload (deleting what was there)
    keep.mkdir(parents=True, exist_ok=True)
    (keep / "precious.txt").write_text("mine")
    z = tmp_path / "photos.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a.png", _png())
    dirs = {
        client.predict(gradio_client.handle_file(str(z)), api_name="/upload_dataset")["dataset_dir"]
        for _ in range(2)
    }
    assert len(dirs) == 2 and all(Path(d).joinpath("a.png").is_file() for d in dirs)
    assert (keep / "precious.txt").read_text() == "mine"


def test_upload_size_limit(tmp_path: Path) -> None:
    paths = AppPaths.create(tmp_path / "runs", [tmp_path], max_upload_bytes=1000)
    z = tmp_path / "big.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a.bin", os.urandom(5000))
    r = Actions(paths).upload_dataset(str(z))
    assert not r["ok"] and "--max-upload-size" in r["message"]
    assert list((tmp_path / "runs" / "uploads").iterdir()) == []
    assert parse_size("2GiB") == 2 << 30 and parse_size("500mb") == 500 << 20 and parse_size("123") == 123
    with pytest.raises(ValueError):
        parse_size("lots")


def test_upload_over_the_server_limit_is_refused(client: Client, tmp_path: Path) -> None:
    z = tmp_path / "big.zip"  # the test UI allows 1 MiB
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a.bin", os.urandom(2 << 20))
    with pytest.raises(Exception, match=r"(?i)size|large|limit|413"):
        client.predict(gradio_client.handle_file(str(z)), api_name="/upload_dataset")


def test_app_paths_rules(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "ds").mkdir(parents=True)
    (data / "escape").symlink_to(tmp_path)
    paths = AppPaths.create(tmp_path / "runs", [data])
    assert paths.readable("dataset.path", str(data / "ds")) == (data / "ds").resolve()
    with pytest.raises(PathRefused, match="--data-dir") as e:
        paths.readable("dataset.path", str(data / "escape"))
    assert e.value.field == "dataset.path"
    assert paths.run_dir("runs/a") == paths.runs / "a" and paths.run_dir("b") == paths.runs / "b"
    for bad in ("/etc/x", "runs", "runs/uploads/x", "templates", "runs/generated", "../x", ""):
        with pytest.raises(PathRefused):
            paths.run_dir(bad)
    assert paths.model_source("demo") == "demo"
    assert paths.model_source("black-forest-labs/FLUX.2-dev") == "black-forest-labs/FLUX.2-dev"
    with pytest.raises(PathRefused):
        paths.model_source("/etc")
    assert resolve_inside("x\x00y", [tmp_path]) is None
    assert paths.served_file("/etc/passwd") is None


def test_one_path_check_in_the_ui() -> None:
    """Every "is this path under that folder" decision of the UI is made by webui/paths.py."""
    root = Path(__file__).resolve().parents[2] / "src" / "flux2_lora" / "webui"
    pattern = re.compile(r"\bin [\w.()\[\]]*\.parents\b|is_relative_to\(")
    offenders = [
        f"{p.relative_to(root)}:{n}"
        for p in root.rglob("*.py")
        if p.name != "paths.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == [], offenders
