"""``flux2-lora ui``: the Gradio web UI (needs the 'ui' extra; never imports torch)."""

from __future__ import annotations

import argparse

from flux2_lora.cli.common import fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="start the web UI (Gradio)")
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0: reachable from others)"
    )
    p.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--auth", default=None, metavar="USER:PASS", help="require this login")
    p.add_argument("--runs-dir", default="runs", help="folder of run directories, uploads and templates")


def run(args: argparse.Namespace) -> int:
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            return fail("--auth must be USER:PASS")
        auth = (user, password)
    try:
        from flux2_lora.webui.app import launch
    except ImportError as e:
        return fail(f"the web UI needs the 'ui' extra: pip install 'flux2-lora[ui]' ({e})")
    launch(args.runs_dir, host=args.host, port=args.port, share=args.share, auth=auth)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="app.py", description="FLUX.2 LoRA trainer web UI")
    add_arguments(parser)
    return run(parser.parse_args(argv))
