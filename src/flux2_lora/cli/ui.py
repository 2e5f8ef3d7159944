"""``flux2-lora ui``: the Gradio web UI (needs the 'ui' extra; never imports torch).

Local only by default. Anyone who reaches the UI can start processes and read the allowed data folders,
so listening on another address or sharing a public link needs ``--auth``, or the loudly named
``--insecure-no-auth`` for a network you trust completely.
"""

from __future__ import annotations

import argparse
import ipaddress

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
    p.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
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
        from flux2_lora.webui.app import launch
    except ImportError as e:
        return fail(f"the web UI needs the 'ui' extra: pip install 'flux2-lora[ui]' ({e})")
    demo, url = launch(
        args.runs_dir,
        host=args.host,
        port=args.port,
        share=args.share,
        auth=auth,
        data_dirs=args.data_dir or None,
        max_upload_bytes=max_upload,
        prevent_thread_lock=True,
        quiet=True,
    )
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
