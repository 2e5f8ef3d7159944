"""The UI's HTTP server around Gradio (issue 18, points 3 and 5), tested on a served app on 127.0.0.1 with
an HTTP client: served files are downloads except the images the page shows, the Host header must name
an address the UI serves, failed logins are throttled per client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from flux2_lora.webui.security import FREE_FAILURES, MAX_WAIT_S, HostRules, LoginThrottle, host_name
from tests.webui.conftest import free_port

httpx = pytest.importorskip("httpx")

USER, PASSWORD = "me", "correct horse"


def _serve(runs: Path) -> Iterator[tuple[str, Path]]:
    from flux2_lora.webui.app import launch

    demo, url = launch(
        str(runs),
        port=free_port(),
        data_dirs=[str(runs)],
        auth=(USER, PASSWORD),
        allowed_hosts=["trainer.lan"],
        prevent_thread_lock=True,
        quiet=True,
    )
    try:
        yield url.rstrip("/"), runs
    finally:
        demo.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A UI with a login, on 127.0.0.1, allowing one extra host name."""
    yield from _serve(tmp_path_factory.mktemp("guard-runs"))


@pytest.fixture
def served_alone(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The same, for a test whose failed logins must not throttle the other tests' logins."""
    yield from _serve(tmp_path)


def _login(url: str, password: str) -> Any:
    return httpx.post(f"{url}/login", data={"username": USER, "password": password}, timeout=30)


def _session(url: str) -> Any:
    c = httpx.Client(base_url=url, timeout=30)
    r = c.post("/login", data={"username": USER, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return c


def test_served_files_are_downloads_except_images(served: tuple[str, Path]) -> None:
    url, runs = served
    upload = runs / "uploads" / "x"
    upload.mkdir(parents=True)
    hostile = {
        "page.html": "<script>fetch('/gradio_api/info')</script>",
        "pic.svg": "<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
        "app.js": "alert(1)",
        "fake.png": "<html><script>alert(1)</script></html>",  # HTML under an image's name
    }
    for name, text in hostile.items():
        (upload / name).write_text(text)
    Image.new("RGB", (8, 8)).save(upload / "real.png")
    Image.new("RGB", (8, 8)).save(upload / "real.webp")
    c = _session(url)
    try:
        for name in ("page.html", "pic.svg", "app.js"):
            for headers in ({}, {"Range": "bytes=0-5"}):
                r = c.get(f"/gradio_api/file={upload / name}", headers=headers)
                assert r.status_code in (200, 206), (name, r.status_code)
                assert r.headers["content-disposition"].startswith("attachment"), (name, r.headers)
                assert r.headers["x-content-type-options"] == "nosniff"
                assert "html" not in r.headers["content-type"] and "svg" not in r.headers["content-type"]
                assert "javascript" not in r.headers["content-type"]
        for name, ctype in (
            ("real.png", "image/png"),
            ("real.webp", "image/webp"),
            ("fake.png", "image/png"),
        ):
            r = c.get(f"/gradio_api/file={upload / name}")
            assert r.status_code == 200 and r.headers["content-type"] == ctype, name
            assert r.headers["x-content-type-options"] == "nosniff"  # fake.png is never sniffed as HTML
            assert not r.headers.get("content-disposition", "inline").startswith("attachment")
    finally:
        c.close()


def test_a_foreign_host_header_is_refused(served: tuple[str, Path]) -> None:
    url, _ = served
    port = url.rsplit(":", 1)[1]
    c = _session(url)
    try:
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil"):
            r = c.get("/gradio_api/info", headers={"Host": host})
            assert r.status_code in (400, 403), (host, r.status_code)
        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            f"[::1]:{port}",
            "trainer.lan",
            "TRAINER.LAN:80",
        ):
            r = c.get("/gradio_api/info", headers={"Host": host})
            assert r.status_code == 200, (host, r.status_code)
    finally:
        c.close()


def test_failed_logins_are_throttled(served_alone: tuple[str, Path]) -> None:
    """200 wrong passwords cannot be tried in a row: after a few failures every attempt is answered
    429 (with Retry-After) without the password being tried, the right one included."""
    url, _ = served_alone
    codes = [_login(url, f"wrong-{i}").status_code for i in range(FREE_FAILURES + 3)]
    assert codes[:FREE_FAILURES] == [400] * FREE_FAILURES and set(codes[FREE_FAILURES:]) == {429}, codes
    r = _login(url, PASSWORD)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "try again" in r.text


def test_the_wait_doubles_and_a_login_resets_it() -> None:
    now = [1000.0]
    t = LoginThrottle(clock=lambda: now[0])
    waits = []
    for _ in range(FREE_FAILURES + 4):
        assert t.wait_s("1.2.3.4") == 0  # each attempt made only once the wait is over
        t.failed("1.2.3.4")
        waits.append(t.wait_s("1.2.3.4"))
        now[0] += waits[-1]
    assert waits[: FREE_FAILURES - 1] == [0] * (FREE_FAILURES - 1)
    assert waits[FREE_FAILURES - 1 :] == [1, 2, 4, 8, 16]
    assert t.wait_s("5.6.7.8") == 0  # per client address
    for _ in range(40):
        t.failed("9.9.9.9")
    assert t.wait_s("9.9.9.9") == MAX_WAIT_S
    t.succeeded("1.2.3.4")
    assert t.wait_s("1.2.3.4") == 0


def test_host_rules() -> None:
    assert (
        host_name("[::1]:7860") == "::1"
        and host_name("LocalHost:1") == "localhost"
        and host_name("::1") == "::1"
    )
    local = HostRules("127.0.0.1", {"box.lan"})
    assert local.allows("127.0.0.1:9") and local.allows("box.lan") and not local.allows("10.0.0.5")
    assert not local.allows("") and not local.allows("evil.example")
    wide = HostRules("0.0.0.0")
    assert wide.allows("10.0.0.5:7860") and wide.allows("[fe80::1]:1") and not wide.allows("evil.example")
    wide.allow("https://abc123.gradio.live")
    assert wide.allows("abc123.gradio.live")


def test_the_pages_own_calls_need_the_login_and_refuse_a_wrong_body(served: tuple[str, Path]) -> None:
    """The form's page calls (webui/direct.py) are Gradio's /run endpoint: behind the login like every
    event; a body that is not the page's own (a wrong count of values) is refused."""
    url, _ = served
    body = {"data": [1, 2, 3], "event_data": None, "session_hash": "x"}
    r = httpx.post(f"{url}/gradio_api/run/page_estimate", json=body, timeout=30)
    assert r.status_code in (401, 403), r.text
    c = _session(url)
    try:
        r = c.post("/gradio_api/run/page_estimate", json=body)
    finally:
        c.close()
    assert r.status_code == 500 and "Traceback" not in r.text, r.text
