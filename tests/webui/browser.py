"""Shared Playwright helpers: Chromium from the system (scripts/install_browser.sh), no playwright install.

Tests wait on what the page shows (data-* attributes the UI renders, element states), never on time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("FLUX2_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
VIEWPORT = {"width": 1440, "height": 1000}
# Where the tests' screenshots go: an ignored folder, so `make test` leaves the tree clean;
# `make screenshots` points it at docs/screenshots to refresh the README's pictures.
SHOTS = Path(os.environ.get("FLUX2_SCREENSHOTS") or REPO / ".screenshots")
INSTALL_HINT = (
    "install Chromium (sudo sh scripts/install_browser.sh, or apt-get install chromium), "
    "or leave these tests out with -m 'not browser'"
)


def browser_problem() -> str | None:
    """Why the browser tests cannot run here, in one line, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the browser tests need Playwright: pip install -e '.[dev]'"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"the browser tests need Chromium, and {CHROMIUM} is not there: {INSTALL_HINT}"
    try:
        proc = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"the browser tests need Chromium, and {CHROMIUM} does not start ({e}): {INSTALL_HINT}"
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"the browser tests need Chromium, and {CHROMIUM} does not start ({why}): {INSTALL_HINT}"
    return None


# Changes a number field in the page and resolves with the ms until the estimate panel shows a new revision.
MEASURE_JS = """
async ([sel, val]) => {
  const panel = () => document.querySelector('#estimate-verdict');
  const before = panel() ? panel().dataset.rev : null;
  const inp = document.querySelector(sel);
  const t0 = performance.now();
  inp.value = val;
  inp.dispatchEvent(new Event('input', {bubbles: true}));
  inp.dispatchEvent(new Event('change', {bubbles: true}));
  return await new Promise((resolve, reject) => {
    const check = () => {
      const p = panel();
      if (p && p.dataset.rev !== before) resolve(performance.now() - t0);
      else if (performance.now() - t0 > 10000) reject(new Error('estimate did not update'));
      else requestAnimationFrame(check);
    };
    check();
  });
}
"""


def launch_browser(p: Any) -> Any:
    return p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])


def field(page: Any, path: str) -> Any:
    """The input of a config field's widget, by field path ("training.max_steps"); its section (or the
    section's Advanced fold) is opened first when it starts closed."""
    from flux2_lora.webui.schema import form_fields

    section, key = path.split(".")
    box = page.locator(f"#field-{section}-{key}").locator("input, textarea").first
    if not box.is_visible():
        spec = next(s for s in form_fields() if s.path == path)
        heads = page.locator(f"#section-{section} .label-wrap")
        if not heads.first.evaluate("e => e.classList.contains('open')"):
            heads.first.click()
        advanced = heads.filter(has_text="Advanced").first
        if spec.advanced and not advanced.evaluate("e => e.classList.contains('open')"):
            advanced.click()
        box.wait_for(state="visible", timeout=10_000)
    return box


def rev(page: Any) -> str:
    return str(page.locator("#estimate-verdict").get_attribute("data-rev"))


def wait_new_estimate(page: Any, before: str, timeout: float = 30_000) -> None:
    page.wait_for_function(
        "b => document.querySelector('#estimate-verdict')?.dataset.rev !== b", arg=before, timeout=timeout
    )


def open_page(browser: Any, url: str) -> Any:
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(url)
    page.wait_for_function("document.querySelector('#estimate-verdict')?.dataset.rev", timeout=60_000)
    return page


def load_preset(page: Any, name: str) -> None:
    """Click a preset button and wait for the estimate of what it loaded. A preset that leaves the form as it
    was gives no new estimate (its revision is a digest of the config), so the demo (a new page's form) is
    reached through another preset first."""
    if name == "quickstart":
        load_preset(page, "klein-4b")
    before = rev(page)
    page.click(f"#preset-{name}")
    wait_new_estimate(page, before)


def set_field(page: Any, path: str, value: str) -> None:
    """Type a value as a user would (the estimate follows on its own)."""
    box = field(page, path)
    box.fill(value)
    box.press("Tab")


def choose(page: Any, elem_id: str, label: str) -> None:
    """Pick an option of a dropdown by its label."""
    page.click(f"#{elem_id} input")
    page.locator(f'[role=option][aria-label="{label}"]').first.click()


def in_viewport(page: Any, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    vp = page.viewport_size
    return bool(box) and box["y"] >= 0 and box["y"] + min(box["height"], 60) <= vp["height"]
