"""The web UI on a free port in a background thread, with its runs and data folders in a temp dir.

Every trainer, pre-flight or generation the UI starts during a test is stopped when the test ends
(:func:`stop_ui_processes`), so no test leaves a process behind for the next one.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

gr = pytest.importorskip("gradio")

if TYPE_CHECKING:
    from gradio_client import Client

# Trainers started by the UI inherit this: one intra-op thread each, so a demo run on a loaded 2-core
# machine is not slowed down further by oversubscription (torch's default is one thread per core).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def ui_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ui-runs")


@pytest.fixture(scope="session")
def ui_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The UI's one --data-dir."""
    return tmp_path_factory.mktemp("ui-data")


@pytest.fixture(scope="session")
def ui_url(ui_runs: Path, ui_data: Path, demo_home: Path) -> Iterator[str]:
    from flux2_lora.webui import monitor
    from flux2_lora.webui.app import launch

    demo_app, url = launch(
        str(ui_runs),
        port=free_port(),
        data_dirs=[str(ui_data)],
        max_upload_bytes=1 << 20,
        prevent_thread_lock=True,
        quiet=True,
    )
    yield url.rstrip("/")
    monitor.stop_all()
    demo_app.close()


@pytest.fixture(autouse=True)
def stop_ui_processes() -> Iterator[None]:
    """Stop every process a UI action of this test launched (trainers included)."""
    yield
    from flux2_lora.webui import monitor

    monitor.stop_all()


@pytest.hookimpl(trylast=True)  # after -m/-k have deselected: only tests that will run count
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Selected browser tests on a machine that cannot run them: one line saying what to install, before
    any test runs (not one error per test, and never a silent skip)."""
    if not any(item.get_closest_marker("browser") for item in items):
        return
    from tests.webui.browser import browser_problem

    problem = browser_problem()
    if problem:
        raise pytest.UsageError(problem)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per test module (the collection hook above has checked it can start)."""
    import playwright.sync_api as playwright

    from tests.webui.browser import launch_browser

    with playwright.sync_playwright() as p:
        b = launch_browser(p)
        yield b
        b.close()


@pytest.fixture(scope="session")
def client(ui_url: str) -> Client:
    from gradio_client import Client

    # download_files=False: gradio_client 2.7 (protocol sse_v3) takes any dict with a "path" key for a file
    # and tries to download it, which would hit config dicts ({"model": {"path": ...}}); files are fetched
    # from the returned FileData's url instead.
    return Client(ui_url, verbose=False, download_files=False)


def tiny_run_config(name: str, steps: int = 6) -> dict[str, Any]:
    """Quickstart shrunk to a few steps, with samples so the gallery has something to show."""
    from flux2_lora.webui import configs

    cfg = configs.apply_preset(configs.default_dict(), "quickstart")["config"]
    cfg["training"].update(max_steps=steps, warmup_steps=0)
    cfg["validation"].update(enabled=True, every_n_steps=3, num_inference_steps=2)
    cfg["output"].update(dir=f"runs/{name}", checkpoint_every=3)
    cfg["logging"].update(tensorboard=False, log_every=1)
    return cfg
