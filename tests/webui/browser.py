"""Shared Playwright helpers: Chromium from the system (scripts/install_browser.sh), no playwright install."""

from __future__ import annotations

import shutil
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

# Changes a slider in the page and resolves with the ms until the estimate panel shows a new revision.
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


def field(page: Any, section: str, key: str, kind: str = "input") -> Any:
    return page.locator(f"#field-{section}-{key} {kind}").first
