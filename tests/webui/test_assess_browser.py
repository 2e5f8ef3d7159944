"""The Train tab's panel shows what assess() says, for the table of tests/test_assess.py (issue 19): each
case is loaded into the form as a template (as a user would), and the page's verdict, field errors,
warnings and host RAM are read from what it renders. Waits until the page shows the assessment, then
compares, so a slow machine only waits longer."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from flux2_lora.assess import WITHOUT_ENV, environment
from flux2_lora.config.io import to_yaml
from flux2_lora.memory.gpus import parse_gpu
from flux2_lora.webui import render
from flux2_lora.webui.paths import AppPaths
from tests.test_assess import CASES, _overrides, composed
from tests.webui.browser import choose, open_page

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.browser, pytest.mark.slow]
playwright = pytest.importorskip("playwright.sync_api")

# What the panel shows, read from the rendered page (not from the server's answer); the same shape as
# expected() below. Field errors are the ones the page puts at their widgets (data-errors).
SHOWN = """
() => {
  const v = document.querySelector('#estimate-verdict');
  const host = (v?.innerText || '').match(/host RAM peak [0-9.]+ (GiB|MiB)/);
  return {
    verdict: v?.dataset.verdict ?? null,
    errors: JSON.parse(v?.dataset.errors || '{}'),
    warnings: [...document.querySelectorAll('#estimate-warnings li')].map(li => li.dataset.field).sort(),
    host: host ? host[0] : null,
  };
}
"""
SHOWS = f"want => JSON.stringify(({SHOWN})()) === JSON.stringify(want)"


def expected(a: dict[str, Any]) -> dict[str, Any]:
    """What the panel must show for an assessment (its to_dict()), keys in SHOWN's order."""
    report = a["report"] or {}
    host = report.get("host") or {}
    if not a["available"]:
        unknown = any(e["field"].startswith("model.") for e in a["errors"])
        verdict = "unknown" if unknown else ("error" if a["errors"] else "unavailable")
    elif host.get("device") == "cpu":  # a CPU run: the panel judges host RAM
        verdict = host.get("verdict") or "unknown"
    else:
        verdict = report["gpu"]["verdict"]
    return {
        "verdict": verdict,
        "errors": {e["field"]: e["message"] for e in a["errors"] if e["field"]},
        "warnings": sorted(w["field"] for w in a["warnings"]),
        "host": f"host RAM peak {render.gib(host['peak_gib'])}" if host else None,
    }


def _shows(page: Page, want: dict[str, Any]) -> dict[str, Any]:
    """Wait until the panel shows ``want`` (the estimate and the dataset check are asynchronous), then
    return what it shows; on a timeout, what it showed last, for the assertion to name the difference."""
    try:
        page.wait_for_function(SHOWS, arg=want, timeout=60_000)
    except Exception:  # playwright's TimeoutError: compared and reported below
        pass
    return dict(page.evaluate(SHOWN))


@pytest.fixture
def case_env(request: pytest.FixtureRequest) -> Any:
    yield
    os.environ.pop(WITHOUT_ENV, None)
    environment.cache_clear()


def test_the_train_tab_agrees_with_the_assessment(
    browser: Browser, ui_url: str, ui_runs: Path, ui_data: Path, case_env: Any
) -> None:
    templates = AppPaths.create(ui_runs, [ui_data]).templates
    templates.mkdir(parents=True, exist_ok=True)
    page = open_page(browser, ui_url)
    page.get_by_text("Templates", exact=True).click()
    for i, (name, presets, overrides, gpu, fields, without) in enumerate(CASES):
        os.environ[WITHOUT_ENV] = without  # the served UI runs in this process: it sees the same packages
        environment.cache_clear()
        folder = ui_data / f"browser-case-{i}"
        folder.mkdir(exist_ok=True)
        data, a = composed(presets, _overrides(overrides, folder), gpu)
        assert {e.field for e in a.errors} >= fields and (fields or a.ok), (name, a.errors)
        # Written as a file, not through save_template: an invalid case (warmup > steps) is loaded too.
        (templates / f"case-{i}.yaml").write_text(to_yaml(data), encoding="utf-8")
        choose(page, "gpu-choice", parse_gpu(gpu).name)
        page.keyboard.press("Escape")
        choose(page, "template-pick", f"case-{i}")
        want = expected(a.to_dict())
        got = _shows(page, want)
        assert got == want, (
            f"{name}: the panel shows {json.dumps(got)}, the assessment says {json.dumps(want)}"
        )
        for message in want["errors"].values():
            assert render.ui_words(message)[:40] in page.locator("#form-errors").inner_text(), name
    page.close()
