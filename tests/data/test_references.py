"""Edit datasets: targets paired with references (folder by stem, metadata.jsonl), hostile input named
by file or line, ZIPs carrying both layouts, and the trained reference sizes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from flux2_lora.data import open_dataset
from flux2_lora.data.references import reference_size, reference_tokens
from flux2_lora.data.scan import DatasetReport, scan_dataset


def img(path: Path, size: tuple[int, int] = (64, 64), color: tuple[int, int, int] = (128, 0, 0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def rel(report: DatasetReport, paths: tuple[Path, ...]) -> list[str]:
    return [p.relative_to(report.root).as_posix() for p in paths]


def messages(report: DatasetReport) -> dict[str, list[str]]:
    return {f: [f"{p.severity}: {p.message}" for p in ps] for f, ps in report.problems_by_file().items()}


def test_folder_layout_pairs_by_stem_single_and_numbered(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in ("a", "b", "c"):
        img(data / f"{name}.png")
        (data / f"{name}.txt").write_text(f"edit {name}")
    img(data / "refs" / "a.jpg")
    img(data / "refs" / "b_0.png", (96, 64))
    img(data / "refs" / "b_1.png", (64, 128))
    img(data / "refs" / "zzz.png")  # an orphan
    report = scan_dataset(data, reference_path="refs")
    by = {i.path.name: i for i in report.items}
    # the reference folder lies inside the dataset: its images are references, never targets
    assert sorted(by) == ["a.png", "b.png", "c.png"]
    assert rel(report, by["a.png"].references) == ["refs/a.jpg"]
    assert rel(report, by["b.png"].references) == ["refs/b_0.png", "refs/b_1.png"]
    assert by["c.png"].references == ()
    s = report.references
    assert s is not None and s.layout == "folder"
    assert (s.pairs, s.without, s.orphans) == (2, ["c.png"], ["zzz.png"])
    assert s.counts == {1: 1, 2: 1}
    assert s.sizes == {"64x64": 1, "96x64": 1, "64x128": 1}
    assert s.max_tokens == 6 * 4 + 4 * 8
    d = report.to_dict()["references"]
    assert d["orphan_references"] == ["zzz.png"] and d["references_per_target"] == {"1": 1, "2": 1}
    assert "orphan references: 1" in report.format()


def test_folder_outside_the_dataset_and_ambiguous_names(tmp_path: Path) -> None:
    data, refs = tmp_path / "data", tmp_path / "refs"
    for name in ("a", "b", "c", "d"):
        img(data / f"{name}.png")
    img(refs / "a.png")
    img(refs / "a_0.png")  # both layouts for a
    img(refs / "b.png")
    img(refs / "b.jpg")  # two files for b
    img(refs / "c_0.png")
    img(refs / "c_2.png")  # c_1 missing
    img(refs / "d_0.png")
    report = scan_dataset(data, reference_path=str(refs))
    assert [i.path.name for i in report.items] == ["a.png", "b.png", "c.png", "d.png"]
    by = {i.path.name: i for i in report.items}
    assert by["d.png"].references == (refs / "d_0.png",)
    m = messages(report)
    assert "numbered references" in m["a.png"][0] and m["a.png"][0].startswith("error")
    assert "share a name" in m["b.png"][0]
    assert "skip _1" in m["c.png"][0]
    # an ambiguous target is reported, and trains without references only in the count of "without"
    assert report.references is not None and report.references.pairs == 1


def test_bad_references_skip_their_pair_by_name(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in ("small", "wide", "broken", "ok"):
        img(data / f"{name}.png")
    img(data / "refs" / "small.png", (32, 64))
    img(data / "refs" / "wide.png", (64 * 9, 64))
    (data / "refs" / "broken.png").write_bytes(b"not an image")
    img(data / "refs" / "ok.png")
    report = scan_dataset(data, reference_path="refs")
    assert [i.path.name for i in report.items] == ["ok.png"]
    m = messages(report)
    assert "at least 64" in m["refs/small.png"][0]
    assert "8:1" in m["refs/wide.png"][0]
    assert "not an image" in m["refs/broken.png"][0]
    assert any("skipping this pair" in x for x in m["small.png"])


def test_reference_folder_symlink_escape_is_not_read(tmp_path: Path) -> None:
    data, secret = tmp_path / "data", tmp_path / "secret"
    img(data / "a.png")
    img(data / "b.png")
    img(secret / "a.png")
    (data / "refs").mkdir()
    os.symlink(secret / "a.png", data / "refs" / "a.png")
    img(data / "refs" / "b.png")
    report = scan_dataset(data, reference_path="refs")
    assert [i.path.name for i in report.items] == ["b.png"]
    assert "outside" in messages(report)["refs/a.png"][0]
    # a relative reference_path may not climb out of the dataset folder
    out = scan_dataset(data, reference_path="../secret")
    assert all(i.references == () for i in out.items)
    assert "leads outside the dataset folder" in " ".join(p.message for p in out.problems)
    missing = scan_dataset(data, reference_path="nowhere")
    assert "is not a folder" in " ".join(p.message for p in missing.problems)


def write_meta(data: Path, lines: list[object]) -> None:
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines)
    (data / "metadata.jsonl").write_text(text + "\n", encoding="utf-8")


def test_metadata_jsonl_layout_and_hostile_lines(tmp_path: Path) -> None:
    data = tmp_path / "data"
    img(data / "t" / "x.png")
    img(data / "t" / "y.png")
    img(data / "t" / "z.png")
    img(data / "in" / "x0.png")
    img(data / "in" / "x1.png", (128, 64))
    img(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", data / "in" / "link.png")
    write_meta(
        data,
        [
            {"file_name": "t/x.png", "text": "make it blue", "references": ["in/x0.png", "in/x1.png"]},
            "{not json",
            {"file_name": "t/y.png", "references": ["../outside.png"]},
            {"file_name": "t/y.png", "references": ["/etc/passwd"]},
            {"file_name": "t/y.png", "references": ["in/link.png"]},
            {"file_name": "/abs.png"},
            {"file_name": "t/x.png", "text": "again"},
            {"file_name": "t/missing.png"},
            [1, 2],
            {"file_name": "t/z.png", "text": 5},
            "",
        ],
    )
    report = scan_dataset(data)
    by = {i.path.relative_to(data).as_posix(): i for i in report.items}
    # references are never targets; the unlisted and refused ones train as plain text-to-image images
    assert sorted(by) == ["t/x.png", "t/y.png", "t/z.png"]
    assert by["t/x.png"].caption == "make it blue" and by["t/x.png"].caption_source == "file"
    assert rel(report, by["t/x.png"].references) == ["in/x0.png", "in/x1.png"]
    assert by["t/y.png"].references == ()
    meta = messages(report)["metadata.jsonl"]
    for n, words in [
        (2, "not valid JSON"),
        (3, "outside the dataset folder"),
        (4, "absolute path"),
        (5, "symbolic link"),
        (6, "absolute path"),
        (7, "listed again (first on line 1)"),
        (8, "not an image of the dataset folder"),
        (9, "not a JSON object"),
        (10, "text must be a string"),
    ]:
        assert any(f"line {n}: " in x and words in x for x in meta), (n, meta)
    s = report.references
    assert s is not None and s.layout == "metadata" and s.pairs == 1 and s.without == ["t/y.png", "t/z.png"]


def test_metadata_that_is_not_utf8_or_too_large_is_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    img(data / "a.png")
    (data / "metadata.jsonl").write_bytes(b'{"file_name": "a.png", "text": "\xff"}\n')
    report = scan_dataset(data)
    assert [i.path.name for i in report.items] == ["a.png"]
    assert "UTF-8" in messages(report)["metadata.jsonl"][0]


def test_dataset_check_reports_pairs_without_a_traceback(tmp_path: Path) -> None:
    data = tmp_path / "data"
    img(data / "a.png")
    img(data / "refs" / "a.png")
    img(data / "refs" / "orphan.png")
    write_meta(data, ["{broken"])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    cmd = [sys.executable, "-m", "flux2_lora.cli", "dataset", "check", str(data), "--reference-path", "refs"]
    proc = subprocess.run([*cmd, "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    refs = json.loads(proc.stdout)["references"]
    assert (refs["pairs"], refs["orphan_references"]) == (1, ["orphan.png"])
    text = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert "pairs:             1" in text.stdout and "Traceback" not in text.stderr


@pytest.mark.parametrize("layout", ["folder", "metadata"])
def test_a_zip_carries_both_layouts(tmp_path: Path, layout: str) -> None:
    src = tmp_path / "src"
    img(src / "a.png")
    img(src / "refs" / "a.png", (96, 96))
    if layout == "metadata":
        write_meta(src, [{"file_name": "a.png", "text": "do it", "references": ["refs/a.png"]}])
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(src).as_posix())
    root, report = open_dataset(
        archive, tmp_path / "work", reference_path="refs" if layout == "folder" else ""
    )
    assert [i.path.name for i in report.items] == ["a.png"]
    assert rel(report, report.items[0].references) == ["refs/a.png"]
    assert root != src


@pytest.mark.parametrize(
    ("size", "count"), [((3000, 2000), 2), ((1030, 1030), 3), ((640, 480), 1), ((4000, 100), 2)]
)
def test_reference_size_matches_diffusers_at_its_1024_cap(size: tuple[int, int], count: int) -> None:
    """Several references: our trained size equals what Flux2Pipeline gives an image= input."""
    from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor

    im = Image.new("RGB", size)
    w, h = im.size
    if w * h > 1024 * 1024:
        im = Flux2ImageProcessor._resize_to_target_area(im, 1024 * 1024)
        w, h = im.size
    assert reference_size(*size, count) == (w // 16 * 16, h // 16 * 16)


def test_single_reference_cap_and_explicit_cap() -> None:
    w, h = reference_size(4000, 4000, 1)
    assert w * h <= 2024 * 2024 and w % 16 == 0 and w == 2016
    assert reference_size(4000, 4000, 1, max_pixels=512 * 512) == (512, 512)
    assert reference_tokens([(4000, 4000), (4000, 4000)]) == 2 * (1024 // 16) ** 2
    assert reference_tokens([(64, 64)]) == 16
    assert math.isclose(reference_size(500, 300, 1)[0], 496)


def test_assessment_refuses_more_references_than_the_variant_takes(tmp_path: Path) -> None:
    from flux2_lora.assess import assess, dataset_facts
    from flux2_lora.config import TrainConfig

    data = tmp_path / "data"
    img(data / "a.png")
    for k in range(5):
        img(data / "refs" / f"a_{k}.png")
    base = {"model": {"path": "demo"}, "dataset": {"path": str(data), "reference_path": "refs"}}
    config = TrainConfig.model_validate(base)
    facts = dataset_facts(config)
    assert facts is not None and facts.max_references == 5
    errors = assess(config, dataset=facts, recommendations=False).errors
    assert [(e.field, "at most 4" in e.message) for e in errors] == [("dataset.reference_path", True)]
    (data / "refs" / "a_4.png").unlink()
    config = TrainConfig.model_validate(base)
    assert not assess(config, dataset=dataset_facts(config), recommendations=False).errors
    gone = TrainConfig.model_validate({**base, "dataset": {"path": str(data), "reference_path": "gone"}})
    errors = assess(gone, dataset=dataset_facts(gone), recommendations=False).errors
    assert [e.field for e in errors] == ["dataset.reference_path"] and "not a folder" in errors[0].message


@pytest.mark.parametrize(
    ("update", "field", "words"),
    [
        ({"dataset": {"reference_max_pixels": 1000}}, "dataset.reference_max_pixels", "below 64²"),
        (
            {"validation": {"prompts": ["a"], "references": [["x.png"], ["y.png"]]}},
            "validation.references",
            "2 reference lists for 1",
        ),
        (
            {"validation": {"references": [["a", "b", "c", "d", "e"]]}},
            "validation.references[0]",
            "at most 4",
        ),
    ],
)
def test_reference_rules_belong_to_the_config(update: dict[str, object], field: str, words: str) -> None:
    from flux2_lora.config.io import validate_dict

    config, issues = validate_dict({"model": {"path": "demo"}, **update})
    errors = [i for i in issues if i.level == "error"]
    assert config is None and [i.path for i in errors] == [field] and words in errors[0].message, issues
