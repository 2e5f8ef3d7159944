"""Auto-tune: different, explained configs for a 5-image square, a 40-image square and a mixed-aspect
dataset (images made with PIL in temp dirs), each fitted to a GPU by the memory model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from flux2_lora.config.io import load_config
from flux2_lora.experiments.autotune import propose
from flux2_lora.experiments.datastats import find_trigger
from tests.helpers import cli

SIZES_MIXED = [(1216, 832), (832, 1216), (1024, 1024), (1344, 768)]


def make_dataset(root: Path, sizes: list[tuple[int, int]], captions: list[str] | None) -> Path:
    root.mkdir(parents=True)
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (20 * (i % 12), 90, 160)).save(root / f"img_{i:02d}.png")
        if captions is not None:
            (root / f"img_{i:02d}.txt").write_text(captions[i % len(captions)], encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("autotune")
    person = ["a photo of ohwx man smiling", "ohwx man, portrait, outdoors", "close-up of ohwx man's face"]
    return {
        "five": make_dataset(base / "five", [(768, 768)] * 5, person),
        "forty": make_dataset(base / "forty", [(1024, 1024)] * 40, person),
        "mixed": make_dataset(
            base / "mixed",
            SIZES_MIXED * 4,
            ["a harbour at dusk, zxq style painting", "zxq style, a mountain road", "a cat in zxq style"],
        ),
    }


def choices(p: Any) -> dict[str, tuple[Any, str]]:
    return {c.field: (c.value, c.reason) for c in p.choices}


def test_three_datasets_get_three_different_explained_configs(datasets: dict[str, Path]) -> None:
    five = propose(datasets["five"], gpu="24")
    forty = propose(datasets["forty"], gpu="24")
    mixed = propose(datasets["mixed"], gpu="24")
    assert (five.kind, forty.kind, mixed.kind) == ("character", "character", "style")
    c5, c40, cm = choices(five), choices(forty), choices(mixed)
    for c in (c5, c40, cm):  # every value has its reason
        assert all(reason for _, reason in c.values())
        for key in ("lora.rank", "training.max_steps", "training.learning_rate", "dataset.resolution",
                    "dataset.bucketing", "dataset.repeats", "dataset.trigger_word"):  # fmt: skip
            assert key in c
    # rank: fewer images, smaller adapter; a style gets the style preset's rank
    assert c5["lora.rank"][0] == 16 and "5 images" in c5["lora.rank"][1]
    assert c40["lora.rank"][0] == 32 and cm["lora.rank"][0] == 64
    # steps scale with the image count (capped)
    assert c5["training.max_steps"][0] == 500 < c40["training.max_steps"][0] == 3000
    assert "capped" in c40["training.max_steps"][1] and "40 images" in c40["training.max_steps"][1]
    assert cm["training.max_steps"][0] == 800  # 16 images × 50 for a style
    # resolution never above the typical image; buckets only where aspects vary
    assert c5["dataset.resolution"][0] == 768 and c40["dataset.resolution"][0] == 1024
    assert c5["dataset.bucketing"][0] is False and cm["dataset.bucketing"][0] is True
    assert "12 of 16 images are not square" in cm["dataset.bucketing"][1]
    assert c5["training.learning_rate"][0] < cm["training.learning_rate"][0]  # character 5e-5, style 1e-4
    # the trigger running through the captions
    assert c5["dataset.trigger_word"][0] == "ohwx" and cm["dataset.trigger_word"][0] == "zxq"
    assert cm["dataset.caption_dropout"][0] == 0.05
    configs = [p.config for p in (five, forty, mixed)]
    assert len({c.model_dump_json() for c in configs}) == 3
    for p in (five, forty, mixed):  # fitted to the 24 GB card
        assert p.fit["verdict"] in ("fits", "tight") and p.fit["gpu"].startswith("24 GB")


def test_a_config_that_does_not_fit_is_fitted_and_the_changes_say_why(datasets: dict[str, Path]) -> None:
    # [dev] cannot fit 24 GB at all (measured on an H200: NF4 at 512 px already peaks at 23.8 GiB); 48 GB can.
    p = propose(datasets["forty"], variant="dev", gpu="48")
    fitted = [c for c in p.choices if c.source == "gpu fit"]
    assert fitted and all(c.reason.startswith("to fit 48 GB") for c in fitted)
    assert p.fit["total_gib"] < p.fit["total_gib_before"] and p.fit["verdict"] in ("fits", "tight")
    assert p.config.memory.quantization in ("int8", "nf4") or p.config.memory.cpu_offload


def test_the_trigger_is_found_and_its_consistency_counted() -> None:
    caps = ["sks dog on grass", "a sks dog", "sks dog running", "a dog in the snow"]
    assert find_trigger(caps) == ("sks", 3)
    assert find_trigger(caps, "dog") == ("dog", 4)
    assert find_trigger(["a red car", "a blue bike", "a green boat"]) == (None, 0)
    assert find_trigger(["ohwx man", "a photo of ohwx man", "ohwx man smiling"]) == ("ohwx", 3)


def test_missing_captions_get_a_default_caption_and_trigger(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "bare", [(640, 640)] * 6, None)
    p = propose(root, kind="character")
    c = choices(p)
    assert c["dataset.default_caption"][0] == "a photo of sks person"
    assert "no caption files" in c["dataset.default_caption"][1]
    assert c["dataset.resolution"][0] == 512  # 640 px images: 512, not upscaled to 768


def test_bad_datasets_are_clean_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = cli("autotune", str(tmp_path / "empty"))
    assert proc.returncode == 2 and "no usable images" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("autotune", str(tmp_path / "missing"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = cli("autotune", "demo", "--variant", "nope")
    assert proc.returncode == 2 and "--variant" in proc.stderr


def test_cli_json_and_write(datasets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "proposal.yaml"
    proc = cli("autotune", str(datasets["mixed"]), "--gpu", "48", "--json", "--write", str(out), check=True)
    report = json.loads(proc.stdout)
    assert report["kind"] == "style" and report["dataset"]["num_images"] == 16
    assert {c["field"] for c in report["choices"]} >= {"lora.rank", "dataset.bucketing"}
    text = out.read_text()
    assert text.startswith("# flux2-lora autotune: a style LoRA") and "#   dataset.bucketing = True:" in text
    config, _ = load_config(out)  # the trainer takes the written file as it is
    assert config.dataset.bucketing and config.dataset.path == str(datasets["mixed"].resolve())
    human = cli("autotune", str(datasets["five"]), "--gpu", "24", check=True).stdout
    assert "lora.rank" in human and "5 images: rank 16" in human
