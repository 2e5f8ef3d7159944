"""Every finished run writes README.md in the Hub's model-card format (read back with huggingface_hub's own
ModelCard parser); `flux2-lora push` uploads the LoRA files, the card and the samples through HfApi (no Hub
server exists here: the upload calls are recorded and their arguments asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import ModelCard
from PIL import Image

from flux2_lora import runs
from flux2_lora.cli import main
from flux2_lora.config.io import load_config, save_config
from flux2_lora.model_card import CARD_FILE, card_text, write_card
from flux2_lora.training.trainer import run_training
from tests.conftest import MakeConfig
from tests.helpers import assert_finished


def fake_run(root: Path, *, variant: str = "klein-4b", state: str = "finished") -> Path:
    """A run folder as the trainer leaves it: config, status, metrics, eval, two sampled prompts, the LoRA."""
    run = root / "my-lora"
    (run / runs.SAMPLES_DIR).mkdir(parents=True)
    config, _ = load_config(
        presets=["klein-4b"],
        overrides=["dataset.path=demo", "dataset.trigger_word=sks", f"output.dir={run}", "lora.rank=16"],
    )
    save_config(config, run / runs.CONFIG_FILE)
    status = {"state": state, "step": 200, "total_steps": 200, "seconds_per_step": 1.25}
    status["extra"] = {"variant": variant, "device": "cuda", "measured": {"gpu_allocated_peak_gib": 9.21}}
    (run / runs.STATUS_FILE).write_text(json.dumps(status))
    with (run / runs.METRICS_FILE).open("w") as f:
        for step, loss in ((100, 0.61), (200, 0.4321)):
            f.write(json.dumps({"step": step, "loss": loss}) + "\n")
    (run / runs.EVAL_FILE).write_text(json.dumps({"step": 200, "eval_loss": 0.3777}) + "\n")
    with (run / runs.SAMPLES_INDEX).open("w") as f:
        for step in (100, 200):
            for i, prompt in enumerate(("sks on a beach", "a portrait of sks")):
                name = f"step{step:06d}_{i:02d}.png"
                Image.new("RGB", (16, 16), (200, 10, 10)).save(run / runs.SAMPLES_DIR / name)
                f.write(
                    json.dumps({"step": step, "prompt": prompt, "file": f"samples/{name}", "index": i}) + "\n"
                )
        # Hand-edited lines must not publish files from outside samples/.
        f.write(json.dumps({"step": 1, "prompt": "evil", "file": "../../etc/passwd", "index": 0}) + "\n")
        f.write(
            json.dumps({"step": 1, "prompt": "evil2", "file": "samples/../config.yaml", "index": 0}) + "\n"
        )
    (run / runs.LORA_FILE).write_bytes(b"lora")
    (run / runs.CHECKPOINTS_DIR).mkdir()
    return run


def test_the_card_parses_as_a_hub_model_card_with_the_runs_facts(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    card = ModelCard(card_text(run))
    data = card.data.to_dict()
    assert data["base_model"] == "black-forest-labs/FLUX.2-klein-base-4B"
    assert data["license"] == "apache-2.0" and data["library_name"] == "diffusers"
    assert {"lora", "flux2", "text-to-image", "diffusers"} <= set(data["tags"])
    assert data["instance_prompt"] == "sks"
    # The latest sample of each prompt, nothing from outside samples/.
    assert data["widget"] == [
        {"text": "sks on a beach", "output": {"url": "samples/step000200_00.png"}},
        {"text": "a portrait of sks", "output": {"url": "samples/step000200_01.png"}},
    ]
    text = card.text
    assert "Flux2KleinPipeline" in text and "load_lora_weights" in text
    assert "| LoRA rank / alpha | 16 / 16 |" in text or "| LoRA rank / alpha | 16 /" in text
    assert "| final train loss (last logged step) | 0.4321 |" in text  # the last logged, not a mean
    assert "| final eval loss | 0.3777 |" in text and "9.21" in text


def test_dev_repeats_its_non_commercial_license(tmp_path: Path) -> None:
    run = fake_run(tmp_path, variant="dev")
    save_config(load_config(presets=["dev"], overrides=[f"output.dir={run}"])[0], run / runs.CONFIG_FILE)
    data = ModelCard(card_text(run)).data.to_dict()
    assert data["base_model"] == "black-forest-labs/FLUX.2-dev"
    assert data["license"] == "other" and data["license_name"] == "flux-dev-non-commercial-license"


def test_a_finished_demo_run_writes_its_card(make_config: MakeConfig) -> None:
    config = make_config("training.max_steps=2", "dataset.trigger_word=sks")
    assert_finished(run_training(config), config)
    card = ModelCard((Path(config.output.dir) / CARD_FILE).read_text())
    assert card.data.to_dict()["instance_prompt"] == "sks"
    assert "| steps trained | 2 |" in card.text


class RecordingApi:
    calls: list[tuple[str, dict[str, Any]]] = []

    def __init__(self, token: str | None = None) -> None:
        RecordingApi.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id: str, **kw: Any) -> None:
        RecordingApi.calls.append(("create_repo", {"repo_id": repo_id, **kw}))

    def upload_folder(self, **kw: Any) -> Any:
        RecordingApi.calls.append(("upload_folder", kw))
        return type("Info", (), {"oid": "abc123"})()


def test_push_uploads_the_lora_card_and_samples_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub

    run = fake_run(tmp_path)
    RecordingApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    assert main(["push", str(run), "--repo-id", "me/my-lora", "--private", "--token", "t0k"]) == 0
    (_, init), (_, create), (_, upload) = RecordingApi.calls
    assert init == {"token": "t0k"}
    assert create == {"repo_id": "me/my-lora", "repo_type": "model", "private": True, "exist_ok": True}
    assert upload["repo_id"] == "me/my-lora" and Path(upload["folder_path"]) == run
    patterns = upload["allow_patterns"]
    assert patterns[:2] == [runs.LORA_FILE, CARD_FILE]
    assert sorted(p for p in patterns if p.startswith("samples/")) == sorted(
        f"samples/{p.name}" for p in (run / "samples").glob("*.png")
    )
    assert not any("checkpoint" in p or p.endswith((".yaml", ".json", ".jsonl")) for p in patterns)
    assert (run / CARD_FILE).is_file() and "pushed 6 files" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("case", "args", "words"),
    [
        ("not finished", ["--repo-id", "me/x"], "not finished with a LoRA"),
        ("bad repo id", ["--repo-id", "no spaces allowed/x y"], "--repo-id"),
        ("no org", ["--repo-id", "just-a-name"], "ORG/NAME"),
    ],
)
def test_push_refuses_in_one_line(tmp_path: Path, case: str, args: list[str], words: str) -> None:
    run = fake_run(tmp_path, state="stopped" if case == "not finished" else "finished")
    proc = subprocess.run(
        [sys.executable, "-m", "flux2_lora.cli", "push", str(run), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_push_offline_fails_in_one_line(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "flux2_lora.cli", "push", str(run), "--repo-id", "me/x", "--token", "t"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 1 and proc.stderr.startswith("error: push to me/x failed"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_push_dry_run_writes_the_card_and_lists_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = fake_run(tmp_path)
    assert main(["push", str(run), "--repo-id", "me/x", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would upload to me/x" in out and runs.LORA_FILE in out and "checkpoints" not in out
    assert write_card(run).read_text() == (run / CARD_FILE).read_text()
