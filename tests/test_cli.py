"""The CLI's answers to bad input: one clear message naming the field or file, never a traceback."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from flux2_lora import runs

from .helpers import cli, sets

FAST = (
    "training.max_steps=2",
    "training.warmup_steps=0",
    "validation.enabled=false",
    "logging.tensorboard=false",
)


def _clean(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr


def test_presets_list_and_print() -> None:
    from flux2_lora.config.presets import list_presets

    listing = cli("presets", check=True).stdout
    for preset in list_presets():  # which ones ship: tests/config/test_schema.py
        assert preset.name in listing
    assert "max_steps" in cli("presets", "quickstart", check=True).stdout
    missing = cli("presets", "nope")
    assert missing.returncode == 1 and "no preset 'nope'" in missing.stderr


def test_validate_reports_every_error_by_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  learning_rate: -1\n  bogus: 3\nlora:\n  rank: 0\n")
    proc = cli("validate", str(bad))
    assert proc.returncode == 2
    for field in ("training.learning_rate", "training.bogus", "lora.rank"):
        assert field in proc.stderr
    _clean(proc)
    assert cli("validate", "--preset", "quickstart", check=True).stdout.strip() == "config is valid"
    broken = tmp_path / "broken.yaml"
    broken.write_text("training: [unclosed\n")
    proc = cli("validate", str(broken))
    assert proc.returncode == 2 and "broken.yaml" in proc.stderr
    _clean(proc)


def test_out_of_range_override_is_refused_before_loading(tmp_path: Path) -> None:
    proc = cli("train", "--preset", "quickstart", *sets(f"output.dir={tmp_path}/r", "lora.rank=0"))
    assert proc.returncode == 2 and "lora.rank" in proc.stderr
    _clean(proc)


@pytest.mark.slow
def test_missing_local_model(tmp_path: Path) -> None:
    proc = cli(
        "train", "--preset", "quickstart", *sets(f"output.dir={tmp_path}/r", f"model.path={tmp_path}/nowhere")
    )
    assert proc.returncode == 2 and "model.path" in proc.stderr and "does not exist" in proc.stderr
    _clean(proc)
    not_pipeline = tmp_path / "folder"
    not_pipeline.mkdir()
    proc = cli(
        "train", "--preset", "quickstart", *sets(f"output.dir={tmp_path}/r", f"model.path={not_pipeline}")
    )
    assert proc.returncode == 2 and "model_index.json" in proc.stderr
    _clean(proc)


@pytest.mark.slow
def test_unreachable_hub_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    proc = cli(
        "train",
        "--preset",
        "quickstart",
        *sets(f"output.dir={tmp_path}/r", "model.path=black-forest-labs/FLUX.2-klein-base-4B"),
    )
    assert proc.returncode == 1
    assert "model.path: " in proc.stderr and "not in the local Hugging Face cache" in proc.stderr
    _clean(proc)
    status = runs.read_status(tmp_path / "r")
    assert status.state == "failed" and "model.path" in status.message


@pytest.mark.slow
def test_empty_dataset(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = cli(
        "train", "--preset", "quickstart", *sets(f"output.dir={tmp_path}/r", f"dataset.path={empty}", *FAST)
    )
    assert proc.returncode == 2 and "dataset.path" in proc.stderr and "no" in proc.stderr
    _clean(proc)


@pytest.mark.slow
def test_corrupt_image_is_skipped_and_named(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    ds.mkdir()
    Image.new("RGB", (96, 96), (200, 30, 30)).save(ds / "good.png")
    (ds / "good.txt").write_text("a red square")
    (ds / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "r"
    proc = cli("train", "--preset", "quickstart", *sets(f"output.dir={out}", f"dataset.path={ds}", *FAST))
    assert proc.returncode == 0, proc.stderr
    assert "broken.png" in (out / runs.LOG_FILE).read_text()
    assert (out / runs.LORA_FILE).is_file()


def test_output_dir_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("I am a file")
    proc = cli("train", "--preset", "quickstart", *sets(f"output.dir={blocker}/run", *FAST))
    assert proc.returncode == 1 and "output.dir: cannot write to" in proc.stderr
    _clean(proc)


def test_resume_without_checkpoint(tmp_path: Path) -> None:
    proc = cli(
        "train", "--preset", "quickstart", *sets(f"output.dir={tmp_path}/r", *FAST), "--resume", "latest"
    )
    assert proc.returncode == 1 and "no complete checkpoint" in proc.stderr
    assert "without --resume" in proc.stderr and "--resume auto" in proc.stderr
    _clean(proc)


@pytest.mark.slow
def test_resume_auto_starts_over_when_killed_before_the_first_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "r"
    out.mkdir()
    # What a trainer killed while loading leaves: a live-looking status, no checkpoint.
    runs.write_json_atomic(out / runs.STATUS_FILE, runs.RunStatus(state="loading").to_dict())
    proc = cli("train", "--preset", "quickstart", *sets(f"output.dir={out}", *FAST), "--resume", "auto")
    assert proc.returncode == 0, proc.stderr
    assert "no readable checkpoint" in proc.stderr and "starting the run over" in proc.stderr
    assert runs.read_status(out).state == "finished" and (out / runs.LORA_FILE).is_file()
    assert list((out / runs.PREVIOUS_DIR).glob(f"*/{runs.STATUS_FILE}"))  # the killed run is kept
    help_text = cli("train", "--help").stdout
    assert "auto" in help_text and "start the run over" in " ".join(help_text.split())


@pytest.mark.slow
def test_resume_auto_resumes_when_a_checkpoint_exists(tmp_path: Path) -> None:
    out = tmp_path / "r"
    args = sets(f"output.dir={out}", "output.checkpoint_every=1", *FAST)
    cli("train", "--preset", "quickstart", *args, check=True)
    proc = cli("train", "--preset", "quickstart", *args, "--set", "training.max_steps=3", "--resume", "auto")
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in (out / runs.LOG_FILE).read_text() and not (out / runs.PREVIOUS_DIR).exists()


def _blocked_run(out: Path) -> tuple[str, ...]:
    """A run that fails at its first checkpoint: a file stands where the checkpoints folder goes."""
    out.mkdir()
    (out / runs.CHECKPOINTS_DIR).write_text("a file where the checkpoints folder goes")
    return ("train", "--preset", "quickstart", *sets(f"output.dir={out}", "output.checkpoint_every=1", *FAST))


@pytest.mark.slow
def test_a_failure_mid_run_prints_one_line_and_the_log_path(tmp_path: Path) -> None:
    out = tmp_path / "r"
    proc = cli(*_blocked_run(out))
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training failed: FileExistsError" in errors[0]
    assert f"(log: {out / runs.LOG_FILE})" in errors[0]
    _clean(proc)
    log = (out / runs.LOG_FILE).read_text()
    assert "training failed" in log and "Traceback (most recent call last)" in log
    assert "FileExistsError" in log and runs.read_status(out).state == "failed"
    debug = cli(*_blocked_run(tmp_path / "r2"), "--debug")
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


def test_dataset_check_counts_and_json(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    ds.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64)).save(ds / f"{i}.png")
    (ds / "0.txt").write_text("cap")
    (ds / "bad.jpg").write_text("not an image")
    proc = cli("dataset", "check", str(ds), "--json", check=True)
    report = json.loads(proc.stdout)
    text = json.dumps(report)
    assert "bad.jpg" in text
    human = cli("dataset", "check", str(ds), check=True).stdout
    assert "bad.jpg" in human


def test_dataset_check_refuses_a_zip_with_path_traversal(tmp_path: Path) -> None:
    bad = tmp_path / "evil.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("../escape.txt", "x")
    proc = cli("dataset", "check", str(bad))
    assert proc.returncode == 1 and "escape.txt" in proc.stderr
    _clean(proc)
    assert not (tmp_path.parent / "escape.txt").exists()


def test_dataset_check_bucket_table_and_trigger_report(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    ds.mkdir()
    for i, size in enumerate([(768, 1344), (1344, 768), (1024, 1024), (4000, 500)]):
        Image.new("RGB", size).save(ds / f"{i}.png")
        (ds / f"{i}.txt").write_text("sks person" if i == 0 else "a person")
    report = json.loads(
        cli(
            "dataset",
            "check",
            str(ds),
            "--json",
            "--buckets",
            "--resolution",
            "1024",
            "--trigger-word",
            "sks",
            check=True,
        ).stdout
    )
    shapes = {(b["width"], b["height"]) for b in report["buckets"]}
    assert (768, 1344) in shapes and (1344, 768) in shapes and (1024, 1024) in shapes
    assert report["cropped_beyond_rounding"] == ["3.png"]
    assert {t["file"] for t in report["trigger"]} == {"1.png", "2.png", "3.png"}
    text = cli("dataset", "check", str(ds), "--buckets", "--trigger-word", "sks", check=True).stdout
    assert "aspect buckets" in text and "lacks the trigger word" in text


@pytest.mark.slow
def test_generate_with_a_lora_and_scale(tmp_path: Path) -> None:
    import numpy as np

    out = tmp_path / "r"
    # 6 steps: 2 steps' LoRA is too small to move a 64-px image reliably by more than 2 levels.
    cli(
        "train",
        "--preset",
        "quickstart",
        *sets(f"output.dir={out}", *FAST, "training.max_steps=6"),
        check=True,
    )
    lora = str(out / runs.LORA_FILE)
    common = [
        "--prompt",
        "a red circle on stripes, sks style",
        "--steps",
        "3",
        "--resolution",
        "64",
        "--guidance",
        "1",
    ]
    cli("generate", *common, "--out", str(tmp_path / "base.png"), check=True)
    cli("generate", *common, "--lora", lora, "--scale", "0", "--out", str(tmp_path / "zero.png"), check=True)
    cli(
        "generate", *common, "--lora", lora, "--scale", "1.5", "--out", str(tmp_path / "full.png"), check=True
    )
    base, zero, full = (
        np.asarray(Image.open(tmp_path / f"{n}.png"), dtype=float) for n in ("base", "zero", "full")
    )
    assert np.abs(base - zero).max() <= 1 and np.abs(base - full).max() > 2
    missing = cli(
        "generate", *common, "--lora", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "x.png")
    )
    assert missing.returncode == 1 and "--lora" in missing.stderr
    _clean(missing)


@pytest.mark.slow
def test_newline_and_undecodable_file_names_on_a_utf8_console(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    ds = tmp_path / "ds"
    ds.mkdir()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(ds / "new\nline.png")
    (ds / "new\nline.txt").write_text("a green square")  # no trigger word: the trigger report names it
    raw = os.fsencode(ds) + b"/caf\xe9.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(os.fsdecode(raw))
    with open(os.fsencode(ds) + b"/caf\xe9.txt", "wb") as f:
        f.write(b"a red square")  # nor here
    Image.new("RGB", (64, 64)).save(ds / "ok.png")
    (ds / "ok.txt").write_text("sks, a black square")
    (ds / "\x1b[2Jclear.png").write_bytes(b"not an image")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flux2_lora.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    check = run("dataset", "check", str(ds), "--trigger-word", "sks", "--buckets", "--resolution", "64")
    assert check.returncode == 0, check.stderr
    _clean(check)
    for name in ("new\\nline.png", "caf\\xe9.png", "\\x1b[2Jclear.png"):
        assert name in check.stdout, check.stdout
    assert "\x1b" not in check.stdout and "new\nline" not in check.stdout
    json_out = run("dataset", "check", str(ds), "--json")
    assert json.loads(json_out.stdout)["num_images_found"] == 4
    out = tmp_path / "r"
    train = run(
        "train",
        "--preset",
        "quickstart",
        *sets(f"output.dir={out}", f"dataset.path={ds}", "dataset.trigger_word=sks", *FAST),
    )
    assert train.returncode == 0, train.stderr
    _clean(train)
    assert "Logging error" not in train.stderr
    log = (out / runs.LOG_FILE).read_text(encoding="utf-8")
    assert "new\\nline.png" in log and "\\x1b[2Jclear.png" in log and "\x1b" not in log


@pytest.mark.slow
def test_resume_latest_skips_a_truncated_newest_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "r"
    args = ("train", "--preset", "quickstart", *sets(f"output.dir={out}", "output.checkpoint_every=1", *FAST))
    cli(*args, check=True)
    newest = out / runs.CHECKPOINTS_DIR / "checkpoint-2"
    adapter = newest / "adapter.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-100])  # what a full disk or a copy cut short leaves
    bad = cli(*args, "--resume", str(newest))
    assert bad.returncode == 1 and f"cannot resume from {newest}" in bad.stderr
    assert "adapter.safetensors" in bad.stderr
    _clean(bad)
    proc = cli(*args, "--set", "training.max_steps=3", "--resume", "latest")
    assert proc.returncode == 0, proc.stderr
    log = (out / runs.LOG_FILE).read_text()
    assert "--resume latest: skipping checkpoint-2" in log and "adapter.safetensors" in log
    assert f"resumed from {out / runs.CHECKPOINTS_DIR / 'checkpoint-1'} at step 1" in log
    assert runs.read_status(out).state == "finished"


def _failing_import(monkeypatch: pytest.MonkeyPatch, module: str, error: BaseException) -> None:
    import importlib

    import flux2_lora.cli as entry

    real = importlib.import_module

    def fake(name: str, package: str | None = None) -> object:
        if name == f"flux2_lora.cli.{module}":
            raise error
        return real(name, package)

    monkeypatch.setattr(entry.importlib, "import_module", fake)


def test_a_subcommand_missing_an_optional_package_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flux2_lora.cli import main

    _failing_import(monkeypatch, "ui", ModuleNotFoundError("No module named 'gradio'", name="gradio"))
    assert main(["ui", "--port", "7860"]) == 1  # not argparse's "invalid choice" (exit 2)
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: flux2-lora ui: it needs gradio, from the `ui` extra: pip install 'flux2-lora[ui]'"
    ]
    assert main(["presets"]) == 0  # the other commands still work
    assert "(unavailable: it needs gradio" in _help(main, capsys)


def _help(main: object, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main(["--help"])  # type: ignore[operator]
    return capsys.readouterr().out


def test_a_broken_subcommand_shows_as_a_bug_with_its_traceback_under_debug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flux2_lora.cli import main

    bug = ImportError("cannot import name 'tabel_text' from 'flux2_lora.experiments.compare'")
    _failing_import(monkeypatch, "compare", bug)
    assert main(["compare", "a", "b", "--json"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "error: flux2-lora compare: it cannot be loaded (ImportError: cannot import name 'tabel_text' from "
        "'flux2_lora.experiments.compare'); a bug or a broken install (--debug shows the traceback)"
    )
    assert main(["compare", "a", "b", "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "tabel_text" in err.splitlines()[-1]
    # A bug that is not an ImportError (a SyntaxError, a NameError at import) is not hidden either.
    _failing_import(monkeypatch, "sweep", NameError("name 'Pathh' is not defined"))
    assert main(["sweep", "spec.yaml", "--dir", "x"]) == 1
    assert "NameError: name 'Pathh' is not defined" in capsys.readouterr().err


def test_unknown_arguments_of_a_working_command_are_still_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from flux2_lora.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["presets", "--bogus"])
    assert exit_.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
