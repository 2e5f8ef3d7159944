"""Every shipped example config validates (`flux2-lora validate`) and the README points at each."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from .helpers import cli, sets

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _images(folder: Path, n: int = 10, caption: bool = True) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (1024, 1024), (20 * i, 120, 200)).save(folder / f"x{i}.png")
        if caption:
            (folder / f"x{i}.txt").write_text("make the sky purple", encoding="utf-8")
    return folder


def test_there_is_an_example_per_model_and_the_demo() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {
        "quickstart-demo",
        "klein-4b-style",
        "klein-9b-character",
        "dev-concept",
        "klein-4b-edit",
    } <= names
    for p in EXAMPLES:
        text = p.read_text(encoding="utf-8")
        assert text.startswith("#") and text.count("#") >= 3, f"{p.name}: say what it is for, in comments"


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_validates(example: Path, tmp_path: Path) -> None:
    """With a dataset of the user's (the examples name ./my_... folders) each is a valid run."""
    overrides = []
    if "path: demo" not in example.read_text(encoding="utf-8"):
        overrides.append(f"dataset.path={_images(tmp_path / 'data')}")
    if "reference_path:" in example.read_text(encoding="utf-8"):
        overrides.append(f"dataset.reference_path={_images(tmp_path / 'refs', caption=False)}")
    proc = cli("validate", str(example), "--gpu", "80", *sets(*overrides), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "config is valid" in proc.stdout
    assert not [line for line in proc.stderr.splitlines() if line.startswith("error:")], proc.stderr


def test_the_readme_uses_the_examples() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "my_config.yaml" not in readme
    for p in EXAMPLES:
        assert f"examples/{p.name}" in readme, f"README does not mention examples/{p.name}"
