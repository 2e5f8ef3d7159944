"""What the UI's HTTP server enforces around Gradio (an ASGI middleware; no torch).

- **Host check.** A request whose ``Host`` header is not an address this UI serves (the localhost names,
  the bound address, ``--allowed-host`` values) gets 400: a web page on another site that re-points its
  own name at 127.0.0.1 (DNS rebinding) reaches the port, but never with its name accepted.
- **Login throttling.** With ``--auth``, after a few failed logins from one client address each further
  attempt waits twice as long as the one before (up to :data:`MAX_WAIT_S`); a login during the wait is
  answered 429 without the password being tried.
- **Served files.** Files from ``/file=`` come with ``X-Content-Type-Options: nosniff`` and as
  downloads (``Content-Disposition: attachment``, binary content type), except the PNG, JPEG and WebP
  images the page shows: an uploaded HTML, SVG or script never runs on the UI's origin.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")
INLINE_IMAGES = ("image/png", "image/jpeg", "image/webp")  # what the galleries and the compare tab show
FREE_FAILURES = 3  # failed logins per client before the waits begin
FIRST_WAIT_S = 1.0
MAX_WAIT_S = 300.0
MAX_CLIENTS = 10_000  # throttle entries kept (oldest dropped): a flood of addresses cannot grow it


def host_name(header: str) -> str:
    """The name in a Host header, lower-case, without the port ('[::1]:7860' → '::1')."""
    text = header.strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    name, sep, port = text.rpartition(":")
    return name if sep and port.isdigit() and ":" not in name else text


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass
class HostRules:
    """The names a Host header may carry: localhost names, the bound address, --allowed-host values, and,
    when bound to every address (0.0.0.0, ::), this machine's names and any IP address (an address in the
    URL cannot be re-pointed by DNS)."""

    bound: str = "127.0.0.1"
    extra: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.names = {*LOCAL_NAMES, host_name(self.bound), *(host_name(h) for h in self.extra)}
        self.any_ip = self.bound.strip() in WILDCARDS
        if self.any_ip:
            try:
                self.names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
            except OSError:  # no hostname known: the addresses still work
                pass

    def allow(self, url_or_host: str) -> None:
        """Add a name (e.g. the public share link's host once Gradio knows it)."""
        host = urlsplit(url_or_host).hostname if "//" in url_or_host else host_name(url_or_host)
        if host:
            self.names.add(host.lower())

    def allows(self, header: str) -> bool:
        name = host_name(header)
        return name in self.names or (self.any_ip and _is_ip(name))


class LoginThrottle:
    """Failed logins per client address: after :data:`FREE_FAILURES`, each attempt must wait
    FIRST_WAIT_S × 2^(n - FREE_FAILURES) seconds (capped at MAX_WAIT_S) after the last failure."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._clients: OrderedDict[str, tuple[int, float]] = OrderedDict()  # address → (failures, until)

    def wait_s(self, client: str) -> float:
        """Seconds ``client`` must still wait before a login is tried (0: now)."""
        with self._lock:
            _, until = self._clients.get(client, (0, 0.0))
        return max(0.0, until - self.clock())

    def failed(self, client: str) -> None:
        with self._lock:
            n = self._clients.pop(client, (0, 0.0))[0] + 1
            wait = 0.0 if n < FREE_FAILURES else min(MAX_WAIT_S, FIRST_WAIT_S * 2 ** (n - FREE_FAILURES))
            self._clients[client] = (n, self.clock() + wait)
            while len(self._clients) > MAX_CLIENTS:
                self._clients.popitem(last=False)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._clients.pop(client, None)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


async def _plain(send: Send, status: int, text: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": text}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _file_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A /file= response's headers: an image the page shows stays inline, anything else is a download."""
    ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"").decode("latin-1")
    keep = [(k, v) for k, v in headers if k.lower() != b"x-content-type-options"]
    keep.append((b"x-content-type-options", b"nosniff"))
    if ctype.split(";")[0].strip().lower() in INLINE_IMAGES:
        return keep
    out = []
    for k, v in keep:
        if k.lower() == b"content-disposition":
            v = b"attachment" + v[v.find(b";") :] if b";" in v else b"attachment"
        elif k.lower() == b"content-type":
            v = b"application/octet-stream"
        out.append((k, v))
    if not any(k.lower() == b"content-disposition" for k, _ in out):
        out.append((b"content-disposition", b"attachment"))
    out.append((b"content-security-policy", b"sandbox; default-src 'none'"))
    return out


class Guard:
    """The ASGI middleware: Host check, login throttling, served-file headers (see the module)."""

    def __init__(self, app: ASGIApp, hosts: HostRules, throttle: LoginThrottle | None = None) -> None:
        self.app = app
        self.hosts = hosts
        self.throttle = throttle or LoginThrottle()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not self.hosts.allows(_header(scope, b"host")):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await _plain(send, 400, "this UI does not serve that host name (start it with --allowed-host)")
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        if scope.get("method") == "POST" and path.rstrip("/").endswith("/login"):
            await self._login(scope, receive, send)
            return
        if "/file=" in path:
            await self.app(scope, receive, _rewriting(send))
            return
        await self.app(scope, receive, _nosniff(send))

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = (scope.get("client") or ("?", 0))[0]
        wait = self.throttle.wait_s(client)
        if wait > 0:
            retry = str(int(wait) + 1).encode()
            await _plain(
                send,
                429,
                f"too many failed logins from {client}; try again in {int(wait) + 1} s",
                [(b"retry-after", retry)],
            )
            return

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if status == 200:
                    self.throttle.succeeded(client)
                elif 400 <= status < 500:
                    self.throttle.failed(client)
            await send(message)

        await self.app(scope, receive, watch)


def _nosniff(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-content-type-options"
            ]
            message["headers"] = [*headers, (b"x-content-type-options", b"nosniff")]
        await send(message)

    return wrapped


def _rewriting(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = _file_headers(list(message.get("headers", [])))
        await send(message)

    return wrapped
