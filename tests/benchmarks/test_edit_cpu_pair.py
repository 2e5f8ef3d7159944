"""benchmarks/speed/edit_cpu_pair.py: both trainers get the same pairs from its one folder, and its
summary's ratios are ours / diffusers'; step_probe.py times the optimizer steps of a script it runs
unmodified. No training and no diffusers script needed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image, ImageChops

ROOT = Path(__file__).resolve().parents[2]


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("edit_cpu_pair", ROOT / "benchmarks/speed/edit_cpu_pair.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    a, b = a.convert("RGB"), b.convert("RGB")
    return a.size == b.size and ImageChops.difference(a, b).getbbox() is None


def diffusers_view(folder: Path) -> dict[str, tuple[str, str]]:
    """What diffusers' script trains on: datasets' imagefolder makes `file_name` the image column and
    `cond_file_name` the `cond` column (--image_column image --cond_image_column cond --caption_column text)."""
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line]
    return {r["file_name"]: (r["cond_file_name"], r["text"]) for r in rows}


def test_our_trainer_and_diffusers_script_see_the_same_pairs(tmp_path: Path) -> None:
    from flux2_lora.data.demo_edit import DEMO_EDIT_SIZE, demo_edit_pair
    from flux2_lora.data.scan import scan_dataset

    m = bench()
    folder = m.write_pairs(tmp_path / "pairs")
    report = scan_dataset(folder, resolution=m.RESOLUTION, reference_max_pixels=m.RESOLUTION**2)
    assert not [p for p in report.problems if p.severity == "error"]
    ours = {
        i.path.relative_to(folder).as_posix(): (
            [r.relative_to(folder).as_posix() for r in i.references],
            i.caption,
        )
        for i in report.items
    }
    theirs = diffusers_view(folder)
    assert {t: ([c], text) for t, (c, text) in theirs.items()} == ours
    assert len(ours) == 12  # the demo's 16 pairs less the 4 with a second reference (their script takes one)
    for target, (cond, text) in theirs.items():
        i = int(Path(target).stem.split("_")[1])
        refs, goal, instruction = demo_edit_pair(i)
        assert len(refs) == 1 and text == instruction
        assert same_pixels(Image.open(folder / target), goal)
        assert same_pixels(Image.open(folder / cond), refs[0])
        assert Image.open(folder / cond).size == (DEMO_EDIT_SIZE, DEMO_EDIT_SIZE) == (m.RESOLUTION,) * 2


def test_datasets_imagefolder_loads_the_pairs_as_the_script_reads_them(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")  # only diffusers' side needs it; flux2-lora does not
    m = bench()
    folder = m.write_pairs(tmp_path / "pairs")
    train = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))["train"]
    theirs = diffusers_view(folder)
    assert len(train) == len(theirs)
    matched = set()
    for row in train:  # instructions repeat across pairs: a row is its target's pixels and its text
        (target,) = [
            t
            for t, (_, text) in theirs.items()
            if text == row["text"] and same_pixels(row["image"], Image.open(folder / t))
        ]
        assert same_pixels(row["cond"], Image.open(folder / theirs[target][0]))
        matched.add(target)
    assert matched == set(theirs)


def test_summary_ratios_are_ours_over_diffusers() -> None:
    m = bench()

    def run(name: str, s: float, rss: float) -> dict:
        return {"name": name, "ok": True, "s_per_step": s, "median_step_s": s, "cpu_s_per_step": s / 2,
                "peak_rss_mib": rss, "train_rss_mib": rss - 1,
                "lora": {"trainable_params": 10}, "threads": 1}  # fmt: skip

    rows = [
        run("ours", 0.4, 500),
        run("diffusers", 0.5, 800),
        run("diffusers", 0.7, 600),
        run("ours", 0.6, 520),
    ]
    s = m.summarize(rows)
    assert s["ok"] and s["same_lora_params"]
    assert s["s_per_step_ratio"] == pytest.approx(0.5 / 0.6) == s["cpu_s_per_step_ratio"]
    assert s["peak_rss_ratio"] == pytest.approx(510 / 700)
    rows[0]["ok"] = False
    assert not m.summarize(rows)["ok"]


TOY_TRAINER = """
import sys, torch
model = torch.nn.Linear(4, 4)
opt = torch.optim.AdamW(model.parameters())
for _ in range(int(sys.argv[1])):
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    opt.zero_grad()
if sys.argv[2:] == ["fail"]:
    raise RuntimeError("after the steps")
"""


def probe(tmp_path: Path, *trainer_args: str) -> tuple[int, dict]:
    import subprocess
    import sys

    script = tmp_path / "toy_train.py"
    script.write_text(TOY_TRAINER)
    cmd = [sys.executable, str(ROOT / "benchmarks/speed/step_probe.py"), "--script", str(script)]
    proc = subprocess.run(
        [*cmd, "--warmup", "2", "--threads", "1", "--", *trainer_args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # two fresh processes that import torch
def test_step_probe_times_each_optimizer_step_of_an_unmodified_script(tmp_path: Path) -> None:
    code, res = probe(tmp_path, "6")
    assert code == 0 and res["ok"] and res["num_steps"] == 6 == len(res["step_seconds"])
    assert res["warmup_excluded"] == 2 and res["threads"] == 1
    assert res["lora"] == {
        "optimizer": "AdamW",
        "trainable_params": 20,
        "tensors": 2,
        "dtypes": ["torch.float32"],
    }
    assert res["s_per_step"] == pytest.approx(sum(res["step_seconds"][2:]) / 4, abs=1e-4)  # rounded to 10 µs
    assert (
        res["cpu_s_per_step"] > 0 and res["train_rss_mib"] > 0 and res["vm_hwm_mib"] >= res["train_rss_mib"]
    )
    code, res = probe(tmp_path, "3", "fail")
    assert code == 1 and not res["ok"] and res["num_steps"] == 3 and "after the steps" in res["error"]
