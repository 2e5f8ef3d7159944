"""The Sweep tab and the sweep driver use Optuna's public API only (issue 19, point 9): a private
attribute (``study._storage``, ``trial._trial_id``) can change in any Optuna release."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "flux2_lora"


def test_no_private_optuna_attributes() -> None:
    private = re.compile(r"\.(_storage|_trial_id|_study_id|_cached_storage)\b")
    files = [*SRC.joinpath("webui").rglob("*.py"), *SRC.joinpath("experiments").rglob("*.py")]
    offenders = [
        f"{p.relative_to(SRC)}:{n}"
        for p in files
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert offenders == [], offenders
