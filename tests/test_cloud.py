"""``flux2-lora cloud skypilot``: the task file parses with SkyPilot's own parser, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flux2_lora.config.io import load_config
from tests.helpers import cli

PARSE = """
import json, sys
import sky
task = sky.Task.from_yaml(sys.argv[1])
(res,) = task.resources
print(json.dumps({
    "num_nodes": task.num_nodes,
    "accelerators": res.accelerators,
    "spot": res.use_spot,
    "file_mounts": task.file_mounts,
    "storage": {k: [s.name, s.mode.value] for k, s in task.storage_mounts.items()},
    "run": task.run,
    "setup": task.setup,
    "workdir": task.workdir,
    # A secret without a value is a reference, given at launch (sky launch --secret HF_TOKEN).
    "secrets": sorted(r.name for r in task._managed_secret_refs),
}))
"""


def _sky_python() -> str:
    """An interpreter that has SkyPilot: its own environment (``make test`` builds .venv-sky: SkyPilot pins
    click<8.2, diffusers' huggingface_hub needs click>=8.2), else this one if it happens to have it."""
    own = os.environ.get("FLUX2_SKY_PYTHON") or str(
        Path(__file__).resolve().parents[1] / ".venv-sky/bin/python"
    )
    if Path(own).is_file():
        return str(Path(own).absolute())
    try:
        import sky  # noqa: F401
    except ImportError:
        pytest.skip("SkyPilot is not installed (make test sets up .venv-sky)")
    return sys.executable


def _sky_parse(task: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """SkyPilot's parser (schema validation included) in a process whose home has no cloud credentials
    and no SkyPilot state."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_", "AZURE_", "SKYPILOT_"))
    }
    env["HOME"] = str(home)
    return subprocess.run(
        [_sky_python(), "-c", PARSE, str(task)], capture_output=True, text=True, env=env, timeout=120
    )


def test_the_task_parses_with_skypilots_parser(tmp_path: Path) -> None:
    _sky_python()
    data = tmp_path / "photos"
    data.mkdir()
    out = tmp_path / "task.yaml"
    proc = cli(
        "cloud", "skypilot", "--preset", "dev", "--set", f"dataset.path={data}", "--set", "output.dir=runs/style",
        "--strategy", "fsdp", "--gpus", "H100:8", "--nodes", "2", "--spot", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "sky jobs launch" in proc.stdout and "--secret HF_TOKEN" in proc.stdout
    parsed = _sky_parse(out, tmp_path / "home")
    assert parsed.returncode == 0, parsed.stderr[-2000:]
    task = json.loads(parsed.stdout.strip().splitlines()[-1])
    assert task["num_nodes"] == 2 and task["accelerators"] == {"H100": 8} and task["spot"]
    assert task["file_mounts"]["/flux2-lora/dataset"] == str(data)
    assert task["storage"] == {"/flux2-lora/runs": ["flux2-lora-style", "MOUNT_CACHED"]}
    assert task["secrets"] == ["HF_TOKEN"]
    for piece in (
        "--resume auto",
        "$SKYPILOT_NODE_RANK",
        "$SKYPILOT_NODE_IPS",
        "$SKYPILOT_NUM_GPUS_PER_NODE",
    ):
        assert piece in task["run"]
    assert "--index-url" in task["setup"] and Path(task["workdir"], "pyproject.toml").is_file()
    # The config the nodes train with: the mounts' paths, one process per GPU, FSDP; the run passes the
    # node count, rank and machine 0's address.
    config_file = Path(task["file_mounts"]["/flux2-lora/config.yaml"])
    config, _ = load_config(
        config_file,
        overrides=[
            "distributed.num_machines=2",
            "distributed.machine_rank=1",
            "distributed.main_process_ip=10.0.0.1",
        ],
    )
    assert config.dataset.path == "/flux2-lora/dataset" and config.output.dir == "/flux2-lora/runs/style"
    assert config.distributed.strategy == "fsdp" and config.distributed.world_size == 16


def test_skypilots_parser_is_a_real_check(tmp_path: Path) -> None:
    """A task SkyPilot would refuse fails the same parse (so the test above means something)."""
    _sky_python()
    out = tmp_path / "task.yaml"
    assert cli("cloud", "skypilot", "--preset", "quickstart", "--out", str(out)).returncode == 0
    task = yaml.safe_load(out.read_text())
    task["num_node"] = task.pop("num_nodes")  # a typo
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(task))
    assert _sky_parse(bad, tmp_path / "home").returncode != 0
    # The demo needs no uploads, no token: only the config and the run directory are mounted.
    assert set(yaml.safe_load(out.read_text())["file_mounts"]) == {
        "/flux2-lora/runs",
        "/flux2-lora/config.yaml",
    }
    assert "secrets" not in yaml.safe_load(out.read_text())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "H100:x"], "--gpus: 'H100:x' is not TYPE or TYPE:COUNT"),
        (["--gpus", "H100:64"], "--gpus: 64 GPUs per node"),
        (["--set", "dataset.path=/no/such/folder"], "dataset.path: /no/such/folder does not exist here"),
        (["--bucket", "Bad_Bucket"], "--bucket: 'Bad_Bucket' is not a bucket name"),
        (["--nodes", "0"], "--nodes: 0"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, args: list[str], message: str) -> None:
    proc = cli("cloud", "skypilot", "--preset", "quickstart", *args, "--out", str(tmp_path / "t.yaml"))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "t.yaml").exists()


# A stub of each program the task's scripts call: it records its name and argv (NUL-separated, one call a
# line) and does nothing else, so the scripts run here as bash runs them on a node.
STUB = """#!/bin/sh
{ printf '%s' "$(basename "$0")"; for a in "$@"; do printf '\\0%s' "$a"; done; printf '\\n'; } >> "$STUB_LOG"
"""
HOSTILE = [
    "x$(touch pwned)",
    "x`touch pwned`",
    "x; touch pwned",
    "x' && touch pwned '",
    'x" && touch pwned "',
    "flux2-lora[ui] @ file:///a b",
    "$HOME*",
]


def _run_script(script: str, tmp_path: Path, env: dict[str, str]) -> list[list[str]]:
    """Run ``script`` with bash among stubs of python, pip, accelerate and flux2-lora; their calls."""
    bin_dir, work, log = tmp_path / "bin", tmp_path / "work", tmp_path / "calls"
    bin_dir.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    for name in ("python", "python3", "pip", "accelerate", "flux2-lora"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    log.write_text("")
    proc = subprocess.run(
        ["bash", "-c", script],
        cwd=work,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(work), "STUB_LOG": str(log), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert not list(tmp_path.rglob("pwned")), "a value of the task ran as a command"
    return [line.split("\0") for line in log.read_text().splitlines()]


@pytest.mark.parametrize("package", HOSTILE)
def test_values_reach_the_scripts_as_literal_words(tmp_path: Path, package: str) -> None:
    out = tmp_path / "task.yaml"
    cli("cloud", "skypilot", "--preset", "quickstart", "--package", package, "--out", str(out), check=True)
    task = yaml.safe_load(out.read_text())
    calls = _run_script(task["setup"], tmp_path, {"TORCH_INDEX": task["envs"]["TORCH_INDEX"]})
    assert calls[-1] == ["python", "-m", "pip", "install", package]
    assert calls[1][:4] == ["python", "-m", "pip", "install"] and calls[1][4].startswith("torch==")
    assert calls[1][5:] == ["--index-url", task["envs"]["TORCH_INDEX"]]
    # The run script's values come from SkyPilot's environment: each reaches the trainer as one word.
    nodes = "2 $(touch pwned)"
    env = {
        "SKYPILOT_NODE_IPS": "10.0.0.1\n10.0.0.2",
        "SKYPILOT_NUM_GPUS_PER_NODE": "8",
        "SKYPILOT_NUM_NODES": nodes,
        "SKYPILOT_NODE_RANK": "1;touch pwned",
    }
    (train,) = _run_script(task["run"], tmp_path, env)
    assert train[:4] == ["flux2-lora", "train", "/flux2-lora/config.yaml", "--resume"]
    flags = dict(zip(train[5::2], train[6::2]))
    assert flags == {
        "--num-processes": "8",
        "--num-machines": nodes,
        "--machine-rank": "1;touch pwned",
        "--main-process-ip": "10.0.0.1",
        "--main-process-port": "29500",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--package", "flux2-lora\ntouch pwned"], "--package: "),
        (["--cloud", "aws\nrun: touch pwned"], "--cloud: "),
        (["--torch-index", "https://x.example/$(touch pwned)"], "--torch-index: "),
        (["--torch-index", "https://x.example/\ntouch pwned"], "--torch-index: "),
    ],
)
def test_newlines_and_shell_characters_are_refused_by_option(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "t.yaml"
    proc = cli("cloud", "skypilot", "--preset", "quickstart", *args, "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {message}") and "Traceback" not in proc.stderr
    assert not out.exists() and not list(tmp_path.rglob("pwned"))


def test_a_nul_or_a_newline_from_elsewhere_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """argv cannot carry a NUL (so this runs in-process), and a config file can hold a newline."""
    from flux2_lora.cli import main

    out = tmp_path / "t.yaml"
    assert main(["cloud", "skypilot", "--preset", "quickstart", "--package", "a\0b", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: --package: ")
    config = tmp_path / "c.yaml"
    config.write_text('output:\n  dir: "runs/a\\nb"\n')
    assert main(["cloud", "skypilot", "--preset", "quickstart", str(config), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: output.dir: ") and not out.exists()
