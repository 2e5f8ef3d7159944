"""``flux2-lora ui``: the Gradio web UI (needs the 'ui' extra; never imports torch).

Local only by default. Anyone who reaches the UI can start processes and read the allowed data folders,
so listening on another address or sharing a public link needs ``--auth``, or the loudly named
``--insecure-no-auth`` for a network you trust completely.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import socket

from flux2_lora.cli.common import fail

INSECURE_FLAG = "--insecure-no-auth"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="start the web UI (Gradio)")
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 needs --auth)",
    )
    p.add_argument(
        "--port", default=None, metavar="N", help="port, 1-65535 (default: 7860 or the next free one)"
    )
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs --auth)")
    p.add_argument("--auth", default=None, metavar="USER:PASS", help="require this login")
    p.add_argument(
        INSECURE_FLAG,
        dest="insecure_no_auth",
        action="store_true",
        help="allow --host beyond this machine or --share WITHOUT a login: anyone who reaches it can "
        "start processes and read the data folders",
    )
    p.add_argument("--runs-dir", default="runs", help="folder of run directories, uploads and templates")
    p.add_argument(
        "--data-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder the UI may read datasets and models from (repeatable; default: the current folder)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name the UI answers to besides localhost and --host (repeatable; e.g. the name of "
        "this machine on your network, or a proxy's): requests naming any other host are refused",
    )
    p.add_argument(
        "--max-upload-size",
        default="2GiB",
        metavar="SIZE",
        help="largest dataset ZIP accepted for upload (default 2GiB; e.g. 500MiB)",
    )


def is_local(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip()).is_loopback
    except ValueError:
        return False


def parse_port(text: str | None) -> int | None:
    """--port as a number in 1-65535 (None: Gradio picks 7860 or the next free one); ValueError."""
    if text is None:
        return None
    try:
        port = int(str(text).strip())
    except ValueError:
        raise ValueError(f"--port: {text!r} is not a number (1-65535)") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"--port: {port} is out of range (1-65535)")
    return port


def port_taken(host: str, port: int) -> str | None:
    """Why the UI cannot listen on host:port (another program has it, no such address), or None. Binds
    as the server will (address reuse on), so only a live listener counts, not a closed connection."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return f"--port: {port} is in use on {host} (another program listens there); choose another port"
        return f"--host {host}, --port {port}: cannot listen there ({e.strerror or e})"
    return None


def runs_dir_problem(runs_dir: str) -> str | None:
    """Why --runs-dir cannot hold the UI's runs, uploads and templates (checked before anything is made)."""
    from pathlib import Path

    from flux2_lora.webui.paths import refused_root

    try:
        p = Path(runs_dir).expanduser().resolve()
    except (OSError, RuntimeError) as e:
        return f"--runs-dir: {runs_dir} cannot be resolved ({e})"
    why = refused_root(p)
    if why:
        return f"--runs-dir: {why.replace('give the run a folder', 'give the runs a folder')}"
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                return f"--runs-dir: {q} is a file, not a folder"
            break
    return None


def run(args: argparse.Namespace) -> int:
    from flux2_lora.webui.paths import parse_size

    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            return fail("--auth must be USER:PASS")
        auth = (user, password)
    exposed = args.share or not is_local(args.host)
    if exposed and auth is None and not args.insecure_no_auth:
        where = "--share" if args.share else f"--host {args.host}"
        return fail(
            f"{where} makes the UI reachable from other machines, where anyone could start processes and "
            f"read your data folders: add --auth USER:PASS (or {INSECURE_FLAG} on a network you trust)",
            2,
        )
    try:
        max_upload = parse_size(args.max_upload_size)
    except ValueError as e:
        return fail(f"--max-upload-size: {e}", 2)
    try:
        port = parse_port(args.port)
    except ValueError as e:
        return fail(str(e), 2)
    # Refused before anything is created: no uploads/ or templates/ in a folder that was never meant.
    problem = runs_dir_problem(args.runs_dir) or (port_taken(args.host, port) if port else None)
    if problem:
        return fail(problem, 2)
    try:
        from flux2_lora.webui.app import launch
    except ImportError as e:
        return fail(f"the web UI needs the 'ui' extra: pip install 'flux2-lora[ui]' ({e})")
    try:
        demo, url = launch(
            args.runs_dir,
            host=args.host,
            port=port,
            share=args.share,
            auth=auth,
            data_dirs=args.data_dir or None,
            max_upload_bytes=max_upload,
            allowed_hosts=args.allowed_host,
            prevent_thread_lock=True,
            quiet=True,
        )
    except ValueError as e:  # the runs folder (checked above; the same rule in AppPaths)
        return fail(f"--runs-dir: {e}", 2)
    except OSError as e:  # the port taken between the check and the start, or no free port at all
        return fail(f"the UI cannot start: {e.strerror or e}", 2)
    if auth:
        mode = f"login required (user {auth[0]})"
    elif exposed:
        mode = f"NO LOGIN ({INSECURE_FLAG}): anyone who reaches this address controls the trainer"
    else:
        mode = "no login (reachable from this machine only)"
    print(f"flux2-lora web UI: {url}")
    share_url = getattr(demo, "share_url", None)
    if share_url:
        print(f"public link: {share_url}")
    print(f"auth: {mode}", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        demo.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="app.py", description="FLUX.2 LoRA trainer web UI")
    add_arguments(parser)
    return run(parser.parse_args(argv))
