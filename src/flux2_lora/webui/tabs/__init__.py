"""One module per tab: ``create_<tab>(shared, tab)`` builds its components, wires its own events and returns
the components other tabs need (LLaMA-Factory's layout). Cross-tab signals travel through :class:`Shared`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from flux2_lora.webui.actions import Actions


@dataclass
class Shared:
    actions: Actions
    blocks: gr.Blocks
    tabs: gr.Tabs
    run_dir: gr.State  # the run the monitor follows
    runs_changed: gr.State  # bumped when a run starts or ends: lists of runs and LoRAs re-read the disk


PRIVATE: dict[str, Any] = {"api_visibility": "private"}


def skip(outputs: list[Any]) -> dict[Any, Any]:
    """No change to any of ``outputs`` (an empty dict would read as one output value)."""
    return {o: gr.skip() for o in outputs}
