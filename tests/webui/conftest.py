"""The web UI on a free port in a background thread, with its runs folder in a temp dir."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def ui_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ui-runs")


@pytest.fixture(scope="session")
def ui_url(ui_runs: Path, demo_home: Path):  # type: ignore[no-untyped-def]
    from flux2_lora.webui.app import launch

    demo_app, url = launch(str(ui_runs), port=free_port(), prevent_thread_lock=True, quiet=True)
    yield url.rstrip("/")
    demo_app.close()


@pytest.fixture(scope="session")
def client(ui_url: str):  # type: ignore[no-untyped-def]
    from gradio_client import Client

    # download_files=False: gradio_client 2.7 (protocol sse_v3) takes any dict with a "path" key for a file
    # and tries to download it, which would hit config dicts ({"model": {"path": ...}}); files are fetched
    # from the returned FileData's url instead.
    return Client(ui_url, verbose=False, download_files=False)


def tiny_run_config(name: str) -> dict:
    """Quickstart shrunk to a few seconds, with samples so the gallery has something to show."""
    from flux2_lora.webui import actions

    cfg = actions.apply_preset(actions.default_dict_copy(), "quickstart")["config"]
    cfg["training"].update(max_steps=10, warmup_steps=0)
    cfg["validation"].update(enabled=True, every_n_steps=5, num_inference_steps=2)
    cfg["output"].update(dir=f"runs/{name}", checkpoint_every=5)
    cfg["logging"].update(tensorboard=False, log_every=1)
    return cfg
