"""flux2-lora compare on two demo runs that differ in rank."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from flux2_lora.training.trainer import run_training
from tests.helpers import cli


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from tests.conftest import tiny_config

    root = tmp_path_factory.mktemp("compare")
    out = []
    for rank in (4, 8):
        config = tiny_config(
            root / f"rank{rank}",
            f"lora.rank={rank}",
            f"lora.alpha={rank}",
            "validation.enabled=true",
            "validation.every_n_steps=2",
            "validation.num_inference_steps=2",
            "validation.eval_images=2",
            "validation.eval_every=2",
        )
        assert run_training(config).finished
        out.append(Path(config.output.dir))
    return out


def test_compare_json_lists_what_differs_and_the_figures(two_runs: Any, tmp_path: Path) -> None:
    grid = tmp_path / "grid.png"
    report = tmp_path / "report.html"
    proc = cli(
        "compare", *map(str, two_runs), "--json", "--grid", str(grid), "--html", str(report), check=True
    )
    result = json.loads(proc.stdout)
    diff = result["differing_fields"]
    assert diff["lora.rank"] == [4, 8] and diff["lora.alpha"] == [4, 8] and "output.dir" not in diff
    a, b = result["runs"]
    for s in (a, b):
        assert s["state"] == "finished" and s["steps"] == 4
        assert s["final_eval_loss"] is not None and s["best_eval_loss"] <= s["final_eval_loss"]
        assert s["final_train_loss"] > 0 and s["sec_per_step"] > 0 and s["wall_s"] > 0
        assert s["host_peak_gib_measured"] > 0 and s["host_peak_gib_estimated"] > 0
    assert b["lora_bytes"] > a["lora_bytes"]  # rank 8 stores twice the adapter
    assert set(result["curves"]) == {"rank4", "rank8"} and result["curves"]["rank4"]["eval"]
    # The grid: one row per run, one column per sampled step (same prompt, same seed).
    info = result["grid"]
    assert info["rows"] == ["rank4", "rank8"] and info["steps"] == [2, 4]
    with Image.open(grid) as im:
        assert im.height == 24 + 2 * info["cell"] and im.width == 180 + 2 * info["cell"]
    text = report.read_text()
    assert "lora.rank" in text and text.count("data:image/png;base64") == 2


def test_compare_table_and_bad_input(two_runs: Any, tmp_path: Path) -> None:
    text = cli("compare", *map(str, two_runs), check=True).stdout
    assert "final eval loss" in text and "lora.rank: 4 | 8" in text
    bad = cli("compare", str(two_runs[0]), str(tmp_path))
    assert bad.returncode == 1 and "not a run folder" in bad.stderr and "Traceback" not in bad.stderr
    one = cli("compare", str(two_runs[0]))
    assert one.returncode == 1 and "at least two runs" in one.stderr
