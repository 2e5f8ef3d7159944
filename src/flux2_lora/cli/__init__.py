"""``flux2-lora``: one entry point, one module per subcommand (each imports torch only when it runs)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import Any

# Subcommand modules; each has add_parser(subparsers) and a run(args) -> int set as the default func.
SUBCOMMANDS = (
    "train",
    "validate",
    "presets",
    "dataset",
    "caption",
    "estimate",
    "generate",
    "runs_cmd",
    "compare",
    "sweep",
    "autotune",
    "ui",
    "cloud",
    "push",
    "queue_cmd",
    "ask",
)

# Optional packages (top-level import names) and the extra of pyproject.toml that installs each.
EXTRAS = {
    "gradio": "ui",
    "gradio_client": "ui",
    "pandas": "ui",
    "optuna": "experiments",
    "wandb": "wandb",
    "bitsandbytes": "quantization",
    "torchao": "quantization",
    "prodigyopt": "optimizers",
}
DEBUG_ENV = "FLUX2_LORA_DEBUG"  # the same switch as `train --debug` (training/tracking.py reads it)


def _debug(argv: list[str]) -> bool:
    return "--debug" in argv or bool(os.environ.get(DEBUG_ENV))


def import_problem(error: BaseException) -> tuple[str, bool]:
    """What a failed import of a subcommand means, in one line, and whether it is a bug: a missing
    optional package is named with the extra that provides it; anything else is a bug or a broken
    install, shown as such."""
    missing = getattr(error, "name", None) if isinstance(error, ModuleNotFoundError) else None
    top = str(missing).split(".")[0] if missing else ""
    if top in EXTRAS:
        extra = EXTRAS[top]
        return f"it needs {top}, from the `{extra}` extra: pip install 'flux2-lora[{extra}]'", False
    first = str(error).splitlines()[0] if str(error) else ""
    return f"it cannot be loaded ({type(error).__name__}: {first}); a bug or a broken install", True


def _unavailable(sub: argparse._SubParsersAction, name: str, error: BaseException) -> None:
    """The command stays in the menu (so it is not an 'invalid choice') and says why it cannot run."""
    command = name.removesuffix("_cmd")
    reason, bug = import_problem(error)
    p = sub.add_parser(command, help=f"(unavailable: {reason})".replace("%", "%%"), add_help=False)

    def run(args: argparse.Namespace) -> int:
        hint = " (--debug shows the traceback)" if bug and not args.debug_import else ""
        print(f"error: flux2-lora {command}: {reason}{hint}", file=sys.stderr)
        if bug and args.debug_import:
            traceback.print_exception(error, file=sys.stderr)
        return 1

    p.set_defaults(func=run, accepts_any_arguments=True)


def build_parser(debug: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flux2-lora",
        description="Train LoRA adapters for FLUX.2 ([dev], [klein] 4B/9B) — or the embedded demo on CPU.",
    )
    parser.set_defaults(debug_import=debug)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module: Any = importlib.import_module(f"{__name__}.{name}")
        except Exception as e:  # shown when the command is asked for, with its cause
            _unavailable(sub, name, e)
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Names shown are escaped where they are built; this is the net under that: a character the console
    # cannot encode (PYTHONIOENCODING=utf-8 and a file name that is not UTF-8) prints escaped, never raises.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_debug(argv))
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not at interpreter exit
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`flux2-lora compare --json | head -1`): what it wanted was printed. Point
        # stdout at /dev/null so the interpreter's last flush does not raise again, and exit as a
        # SIGPIPE'd program does (128 + 13).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
