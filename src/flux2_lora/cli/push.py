"""``flux2-lora push RUN --repo-id ORG/NAME``: publish a finished run's LoRA files, model card and samples
to the Hugging Face Hub with huggingface_hub's own upload API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flux2_lora.cli.common import fail, show


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("push", help="upload a finished run's LoRA, model card and samples to the Hub")
    p.add_argument("run", help="the run folder (holds status.json and the LoRA)")
    p.add_argument("--repo-id", required=True, help="the Hub model repo, ORG/NAME (created when missing)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--token", help="a Hub token (default: HF_TOKEN or the saved login)")
    p.add_argument(
        "--dry-run", action="store_true", help="write the model card and list the files, upload nothing"
    )
    p.set_defaults(func=run)


def files_to_push(run_dir: Path) -> list[str]:
    """What is published, relative to the run: the LoRA files, the card and the samples (never the
    checkpoints, the config's local paths beyond the card, or the logs)."""
    from flux2_lora import runs
    from flux2_lora.model_card import CARD_FILE

    names = [n for n in (runs.LORA_FILE, runs.COMFYUI_LORA_FILE, CARD_FILE) if (run_dir / n).is_file()]
    samples = run_dir / runs.SAMPLES_DIR
    if samples.is_dir():
        names += sorted(
            f"{runs.SAMPLES_DIR}/{p.name}"
            for p in samples.glob("*.png")
            if p.is_file() and not p.is_symlink()
        )
    return names


def run(args: argparse.Namespace) -> int:
    from flux2_lora import runs
    from flux2_lora.model_card import CardError, write_card

    run_dir = Path(args.run).expanduser()
    status = runs.read_status(run_dir) if run_dir.is_dir() else None
    if status is None:
        return fail(f"{show(run_dir)}: not a run folder (no readable status.json)", 2)
    if status.state != runs.RunState.FINISHED or not (run_dir / runs.LORA_FILE).is_file():
        return fail(
            f"{show(run_dir)}: the run is {status.state}, not finished with a LoRA: nothing to push", 2
        )
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        validate_repo_id(args.repo_id)
        if "/" not in args.repo_id:
            raise HFValidationError("give it as ORG/NAME")
    except HFValidationError as e:
        return fail(f"--repo-id {show(args.repo_id)}: {str(e).splitlines()[0]}", 2)
    try:
        card = write_card(run_dir)
    except (CardError, OSError) as e:
        return fail(str(e))
    names = files_to_push(run_dir)
    if args.dry_run:
        print(f"model card: {show(card)}")
        print("would upload to " + show(args.repo_id) + ":\n  " + "\n  ".join(show(n) for n in names))
        return 0
    return upload(run_dir, args.repo_id, names, private=args.private, token=args.token)


def upload(run_dir: Path, repo_id: str, names: list[str], *, private: bool, token: str | None) -> int:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=str(run_dir),
            allow_patterns=names,
            commit_message=f"Upload LoRA {run_dir.name} (flux2-lora)",
        )
    except Exception as e:  # offline, no token, no rights, a network error: one line, the Hub's words
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"error: push to {show(repo_id)} failed: {show(first)}", file=sys.stderr)
        return 1
    print(f"pushed {len(names)} files to https://huggingface.co/{repo_id} ({getattr(info, 'oid', '')})")
    return 0
