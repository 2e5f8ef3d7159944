"""The estimate's cost does not depend on the page's age or its other tabs (issue 22, point 4), as the
page shows it: after the Runs tab has been open, a field change is one request of the page's own (POST
/gradio_api/run/page_estimate) and no event of Gradio's frontend (the path whose cost grew with every
output the page had shown); a preset is one request for the form and one estimate for all its fields.
The figures themselves are benchmarks/ui_estimate_latency.py --aged's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.webui.browser import open_page, rev, set_field, wait_new_estimate

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")

GRADIO_EVENTS = ("/gradio_api/queue/join", "/gradio_api/run/predict")


def _record(page: Any) -> list[str]:
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url) if r.method == "POST" else None)
    return seen


def test_a_field_change_is_one_request_of_the_page_after_the_runs_tab(browser: Browser, ui_url: str) -> None:
    page = open_page(browser, ui_url)
    page.click("#tab-runs-button")
    page.locator("#runs-table").wait_for(timeout=60_000)
    # Showing Train stops the Runs tab's 1 s timers (an event of its own): wait for it, and for one estimate
    # after it, so a tick sent before the switch is not counted as the change's.
    with page.expect_response(lambda r: r.url.endswith("/gradio_api/run/predict"), timeout=60_000):
        page.click("#tab-train-button")
    before = rev(page)
    set_field(page, "lora.alpha", "9")
    wait_new_estimate(page, before)
    seen = _record(page)
    for alpha in ("12", "20", "28"):  # alpha: the rank would also set the alpha linked to it (two fields)
        before, start = rev(page), len(seen)
        set_field(page, "lora.alpha", alpha)
        wait_new_estimate(page, before)
        window = seen[start:]
        assert sum(u.endswith("/gradio_api/run/page_estimate") for u in window) == 1, window
        assert not [u for u in window if u.endswith(GRADIO_EVENTS)], window
    page.close()


def test_a_preset_is_one_request_for_the_form_and_one_estimate(browser: Browser, ui_url: str) -> None:
    page = open_page(browser, ui_url)
    seen = _record(page)
    before = rev(page)
    page.click("#preset-dev")  # sets many fields: each its own change
    wait_new_estimate(page, before)
    page.wait_for_selector("#estimate-verdict[data-verdict='does_not_fit']", timeout=30_000)
    assert sum(u.endswith("/gradio_api/run/page_preset_dev") for u in seen) == 1, seen
    assert sum(u.endswith("/gradio_api/run/page_estimate") for u in seen) == 1, seen
    page.close()
