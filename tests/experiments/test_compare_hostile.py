"""Readers of run folders (compare, its HTML/PNG outputs, the runs listing, the UI's compare path) on
folders as a diverged run, a damaged disk or a hostile user leaves them: never a traceback; what could
not be read is skipped and said so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from flux2_lora.experiments import compare as cmp
from flux2_lora.experiments.compare_plots import legend_layout, run_colors, series_colors
from tests.helpers import cli

CONFIG = "lora:\n  rank: {rank}\ntraining:\n  learning_rate: 0.0001\n"
FINISHED = {"state": "finished", "step": 6, "total_steps": 6}


def make_run(
    root: Path,
    name: str | bytes,
    metrics: list[str],
    *,
    evals: list[str] = (),  # type: ignore[assignment]
    config: str | bytes | None = CONFIG.format(rank=4),
    status: dict[str, Any] | None = None,
    samples: list[str] = (),  # type: ignore[assignment]
) -> Path:
    run = Path(os.fsdecode(os.fsencode(root) + b"/" + name)) if isinstance(name, bytes) else root / name
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps(status or FINISHED))
    if config is not None:
        (run / "config.yaml").write_bytes(config if isinstance(config, bytes) else config.encode())
    (run / "metrics.jsonl").write_text("".join(f"{line}\n" for line in metrics))
    (run / "eval.jsonl").write_text("".join(f"{line}\n" for line in evals))
    if samples:
        (run / "samples").mkdir()
        (run / "samples" / "index.jsonl").write_text("".join(f"{line}\n" for line in samples))
    return run


def strict_json(text: str) -> Any:
    """JSON as a strict parser reads it: NaN/Infinity are not JSON."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in the JSON output")

    return json.loads(text, parse_constant=refuse)


GOOD = ['{"step": 1, "loss": 1.0}', '{"step": 2, "loss": 0.5}']
DIVERGED = [
    '{"step": 1, "loss": 0.9}',
    '{"step": 2, "loss": NaN}',
    '{"step": 3, "loss": Infinity}',
    '{"step": 4, "loss": -Infinity}',
    '{"step": 5, "loss": null}',  # how the trainer writes a non-finite loss
]
WRONG_TYPES = [
    '{"step": "x", "loss": 1.0}',
    '{"step": 1, "loss": "0.4"}',
    '{"step": 2, "loss": [1]}',
    "[1, 2]",
    '"text"',
    '{"step": true, "loss": 1}',
    '{"step": 1e400, "loss": 2}',
    "{broken",
    '{"step": ' + "9" * 5000 + ', "loss": 1}',  # past Python's int-from-text limit
    '{"step": 3, "loss": 0.3, "sec_per_step": "x"}',  # usable: its loss is fine
]
BAD_SAMPLES = [
    '{"step": "x", "prompt": "p", "file": "a.png"}',
    '{"step": 2, "prompt": ["p"]}',
    '{"step": 2, "prompt": "p", "file": "../../../etc/passwd", "index": 0}',
]
ODD_STATUS = {
    **FINISHED,
    "seconds_per_step": float("nan"),
    "started_at": 10,
    "updated_at": 5,
    "extra": {"measured": [1], "estimate": {"allocated_peak_gib": float("inf")}},
}


@pytest.fixture
def hostile(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "runs"
    evals = ['{"step": 2, "eval_loss": NaN}', '{"step": 4, "eval_loss": 0.9}']
    return {
        "good": make_run(root, "good", GOOD, evals=['{"step": 2, "eval_loss": 0.8}']),
        "rank8": make_run(root, "rank8", GOOD, config=CONFIG.format(rank=8)),
        "diverged": make_run(root, "diverged", DIVERGED, evals=evals),
        "types": make_run(
            root, "types", WRONG_TYPES, evals=['{"step": "3", "eval_loss": 1}'], samples=BAD_SAMPLES
        ),
        "undecodable": make_run(root, b"bad-\xff-name", GOOD),
        "bad_config": make_run(root, "bad_config", GOOD, config=b"\xff\xfe: [unclosed\n"),
        "list_config": make_run(root, "list_config", GOOD, config="- 1\n- 2\n"),
        "no_config": make_run(root, "no_config", GOOD, config=None),
        "odd_status": make_run(root, "odd_status", GOOD, status=ODD_STATUS),
    }


def _clean(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr


def test_every_reader_output_takes_hostile_runs(hostile: dict[str, Path], tmp_path: Path) -> None:
    every = [str(p) for p in hostile.values()]
    files = {k: tmp_path / f"out.{k}" for k in ("html", "grid", "curves")}
    table = cli("compare", *every, *[a for k, f in files.items() for a in (f"--{k}", str(f))])
    _clean(table)
    for f in files.values():
        assert f.stat().st_size > 0
    out = table.stdout
    assert "bad-\\xff-name" in out  # the undecodable byte shown escaped
    for note in (
        "diverged: 5 non-finite losses (NaN/Infinity: the run diverged)",
        "types: 10 damaged or malformed log lines skipped",
        "bad_config: config unreadable: config.yaml: cannot read (UnicodeDecodeError",
        "list_config: config unreadable: config.yaml holds a list, not a config",
        "no_config: config unreadable: config.yaml: no such file",
    ):
        assert note in out, out
    # Only the field that truly differs is listed, with "config unreadable" for those runs, not every field.
    settings = out.split("settings that differ:\n")[1].split("\n\n")[0].splitlines()
    assert settings == [
        "  lora.rank: 4 | 8 | 4 | 4 | 4 | config unreadable | config unreadable | config unreadable | 4"
    ]
    html = files["html"].read_text(encoding="utf-8")
    assert "bad-\\xff-name" in html and "config unreadable" in html

    proc = cli("compare", *every, "--json")
    _clean(proc)
    result = strict_json(proc.stdout)
    runs = {Path(s["run"]).name: s for s in result["runs"]}
    assert runs["diverged"]["final_train_loss"] == 0.9 and runs["diverged"]["final_eval_loss"] == 0.9
    assert runs["diverged"]["non_finite_losses"] == 5 and runs["diverged"]["skipped_lines"] == 0
    assert runs["types"]["final_train_loss"] == 0.3 and runs["types"]["skipped_lines"] == 10
    assert runs["odd_status"]["sec_per_step"] is None and runs["odd_status"]["wall_s"] is None
    assert runs["odd_status"]["gpu_peak_gib_estimated"] is None
    assert result["grid"]["steps"] == [2] and result["grid"]["prompt"] == "p"  # the ../ file is not shown
    assert runs["bad_config"]["config_error"] and runs["good"]["config_error"] is None


def test_an_unreadable_config_is_not_every_field_differing(hostile: dict[str, Path]) -> None:
    text = cli("compare", str(hostile["good"]), str(hostile["bad_config"]), check=True).stdout
    assert "settings not compared: 1 of 2 configs are unreadable (see notes)" in text
    assert "settings that differ" not in text and "lora.rank" not in text
    text = cli("compare", *(str(hostile[k]) for k in ("good", "types", "no_config")), check=True).stdout
    assert "no setting differs among the 2 readable configs (besides output.dir)" in text


def test_final_train_loss_is_the_last_logged_one(tmp_path: Path) -> None:
    losses = [5.0, 4.0, 3.0, 2.0, 1.0, 0.5]
    lines = [json.dumps({"step": i, "loss": v}) for i, v in enumerate(losses, 1)]
    a, b = make_run(tmp_path, "a", lines), make_run(tmp_path, "b", lines[:1])
    (ra, rb) = strict_json(cli("compare", str(a), str(b), "--json", check=True).stdout)["runs"]
    assert ra["final_train_loss"] == 0.5 and ra["train_loss_mean_last5"] == pytest.approx(2.1)
    assert rb["final_train_loss"] == rb["train_loss_mean_last5"] == 5.0
    text = cli("compare", str(a), str(b), check=True).stdout
    assert "last train loss" in text and "train loss, mean of last 5" in text
    assert text.splitlines()[1].split()[4:6] == ["0.5000", "2.1000"]


def test_the_curves_legend_names_every_one_of_30_runs_in_its_own_colour(tmp_path: Path) -> None:
    paths = [
        make_run(tmp_path, f"run-{i:02d}", [json.dumps({"step": s, "loss": 1 / (s + i)}) for s in (1, 2, 3)])
        for i in range(30)
    ]
    records = cmp.load_runs(paths)
    colors = run_colors(30)
    assert len(set(colors)) == 30
    png = tmp_path / "curves.png"
    png.write_bytes(cmp.curves_png(records))
    layout = legend_layout(30, 900, 60)
    with Image.open(png) as im:
        rgb = im.convert("RGB")
        plot_h = 420
        assert plot_h + layout[-1][1] + 14 <= rgb.height  # the last row is inside the picture
        for (x, y), color in zip(layout, colors):
            assert rgb.getpixel((x + 10, plot_h + y + 6)) == color  # each entry's swatch, in its colour
    assert len(set(layout)) == 30
    ui = series_colors([r.name for r in records])
    assert len(ui) == 60 and len(set(ui.values())) == 60  # train and eval of each run, all distinct


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`compare --json | head -1` with far more output than a pipe holds: no BrokenPipeError."""
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 20_000)]
    a, b = make_run(tmp_path, "a", lines), make_run(tmp_path, "b", lines)
    proc = subprocess.run(
        f"{sys.executable} -m flux2_lora.cli compare {a} {b} --json | head -1",
        shell=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.stdout == "{\n" and proc.stderr == "", proc.stderr


def test_the_runs_listing_takes_hostile_runs(hostile: dict[str, Path]) -> None:
    root = hostile["good"].parent
    proc = cli("runs", str(root))
    _clean(proc)
    assert "bad-\\xff-name" in proc.stdout and "inf" not in proc.stdout
    proc = cli("runs", str(root), "--json")
    _clean(proc)
    assert len(strict_json(proc.stdout)) == len(hostile)


def test_the_uis_compare_path_takes_hostile_runs(hostile: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    from flux2_lora.webui import jobs
    from flux2_lora.webui.paths import AppPaths
    from flux2_lora.webui.tabs.compare import frames

    paths = AppPaths.create(hostile["good"].parent, [tmp_path])
    result = jobs.compare_runs(paths, [str(p) for p in hostile.values()])
    assert result["ok"], result
    # What the server sends: UTF-8 JSON without NaN (a lone surrogate would fail to encode).
    json.dumps(result, ensure_ascii=False, allow_nan=False).encode("utf-8")
    table, diff, curves = frames(result)
    assert "bad-\\xff-name" in list(table["run"])
    assert "config unreadable" in set(diff.iloc[0]) and list(diff["setting"]) == ["lora.rank"]
    notes = dict(zip(table["run"], table["notes"]))
    assert "10 damaged or malformed log lines skipped" in notes["types"]
    assert curves["loss"].notna().all() and len(curves) > 0


def test_the_compare_tab_offers_a_non_utf8_run_and_compares_it(hostile: dict[str, Path]) -> None:
    """The page's choices travel as JSON (no lone surrogates): such a run is offered by its bytes."""
    pytest.importorskip("gradio")
    from flux2_lora.webui.tabs.compare import choice_value, run_dir

    odd, plain = str(hostile["undecodable"]), str(hostile["good"])
    assert choice_value(plain) == plain and run_dir(plain) == plain
    value = choice_value(odd)
    value.encode("utf-8")
    assert run_dir(value) == odd and run_dir("hex:zz") == "hex:zz"
