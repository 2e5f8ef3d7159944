"""One module per tab: ``create_<tab>(shared, tab)`` builds its components, wires its own events and returns
the components other tabs need (LLaMA-Factory's layout). Cross-tab signals travel through :class:`Shared`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from flux2_lora.webui.actions import Actions


@dataclass
class Shared:
    actions: Actions
    blocks: gr.Blocks
    run_dir: gr.State  # the run the monitor follows
    runs_changed: gr.State  # bumped when a run starts or ends: lists of runs and LoRAs re-read the disk
    # A hidden box whose change brings a tab into view, in the page (see go_to): an event that outputs the
    # Tabs instead makes every later event's loading-status update walk the whole page (issue 22).
    goto_tab: gr.Textbox
    # The 1 s timers of each tab (by tab id): they tick only while their tab is shown (app.py), since every
    # tick is an event that costs the page a loading-status update of all its outputs, and the server a read.
    timers: dict[str, list[gr.Timer]] = field(default_factory=dict)

    def timer(self, tab_id: str) -> gr.Timer:
        """A 1 s timer of ``tab_id`` that ticks while that tab is shown."""
        t = gr.Timer(1.0, active=False)
        self.timers.setdefault(tab_id, []).append(t)
        return t


PRIVATE: dict[str, Any] = {"api_visibility": "private"}


# Clicks the tab named before the ':' (what follows only makes each value new, so the same tab twice
# is two changes).
GOTO_TAB_JS = "(v) => { const id = (v || '').split(':')[0]; if (id) document.querySelector(`#tab-${id}-button`)?.click(); }"


def go_to(tab_id: str) -> str:
    """The value of Shared.goto_tab that brings ``tab_id`` into view."""
    return f"{tab_id}:{time.monotonic_ns()}"


def skip(outputs: list[Any]) -> dict[Any, Any]:
    """No change to any of ``outputs`` (an empty dict would read as one output value)."""
    return {o: gr.skip() for o in outputs}
