"""``flux2-lora caption DATASET [--model ID|FOLDER]``: write a caption file beside each image with a
vision-language model (keep / overwrite / prefix with the trigger word)."""

from __future__ import annotations

import argparse
import sys

from flux2_lora.cli.common import add_field_args, fail, fields_from_args, show
from flux2_lora.config import DatasetSection

FIELDS = ("caption_extension", "trigger_word")
FLAGS = {"trigger_word": ["--trigger"]}
HELPS = {
    "trigger_word": "Word prefixed to each new caption (required by --mode prefix; allowed with overwrite)."
}
MODE_HELP = (
    "keep: caption only images without a caption file (an interrupted run resumes); "
    "overwrite: replace every caption file; prefix: as keep, each new caption starting with --trigger"
)
MIN_PIXELS = 112 * 112  # below this the Qwen-VL image processor has nothing to merge


def add_parser(sub: argparse._SubParsersAction) -> None:
    from flux2_lora.captioning import DEFAULT_MAX_PIXELS, DEFAULT_MODEL, DEFAULT_PROMPT, MODES

    p = sub.add_parser("caption", help="caption a dataset folder with a vision-language model")
    p.add_argument(
        "path", metavar="DATASET", help="the dataset folder (captions are written beside the images)"
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"Hub id or local folder of the model (default: {DEFAULT_MODEL})",
    )
    p.add_argument("--mode", choices=MODES, default="keep", help=MODE_HELP)
    add_field_args(p, DatasetSection, FIELDS, flags=FLAGS, helps=HELPS)
    p.add_argument(
        "--prompt", default=DEFAULT_PROMPT, help="the instruction given to the model with each image"
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=96, metavar="N", help="caption length limit (default 96)"
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"larger images are shown to the model downscaled to this many pixels (default {DEFAULT_MAX_PIXELS})",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="show what would be captioned and the memory estimate; load nothing",
    )
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace, trigger: str) -> str | None:
    if not args.prompt.strip():
        return "--prompt: must not be empty"
    if not 1 <= args.max_new_tokens <= 2048:
        return f"--max-new-tokens: must be between 1 and 2048 (got {args.max_new_tokens})"
    if args.max_pixels < MIN_PIXELS:
        return f"--max-pixels: must be at least {MIN_PIXELS} (got {args.max_pixels})"
    if args.mode == "prefix" and not trigger:
        return "--trigger: required by --mode prefix (e.g. --trigger sks)"
    if args.mode == "keep" and trigger:
        return "--trigger: --mode keep writes the model's captions as they are; use --mode prefix to add it"
    if not (args.device in ("auto", "cpu", "cuda") or args.device.startswith("cuda:")):
        return f"--device: must be auto, cpu, cuda or cuda:N (got {show(args.device)})"
    return None


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from flux2_lora import captioning as cap
    from flux2_lora.data.scan import DatasetError

    ds = fields_from_args(args, DatasetSection, FIELDS, flags=FLAGS)
    if ds is None:
        return 2
    trigger = ds.trigger_word.strip()
    problem = _check_args(args, trigger)
    if problem:
        return fail(problem, 2)
    try:
        plan = cap.plan_captions(args.path, caption_extension=ds.caption_extension, mode=args.mode)
    except DatasetError as e:
        return fail(str(e))
    for line in plan.problems:
        print(f"skipped: {line}", file=sys.stderr)
    kept = f", {len(plan.kept)} kept (already captioned)" if plan.kept else ""
    refused = f", {len(plan.problems)} skipped" if plan.problems else ""
    print(f"{show(plan.root)}: {plan.num_images_found} images, {len(plan.todo)} to caption{kept}{refused}")
    if not plan.todo:
        print("nothing to caption" + (" (--mode overwrite replaces existing captions)" if plan.kept else ""))
        return 0 if plan.num_images_found else 1
    try:
        device, dtype = cap.resolve_device_dtype(args.device, args.dtype)
        estimate = cap.estimate_memory(args.model, dtype=dtype, device=device)
    except cap.CaptionError as e:
        return fail(str(e))
    print(estimate.line(args.model), flush=True)
    free = cap.available_bytes(device)
    if free is not None and estimate.weights_bytes > free:
        print(
            f"warning: only {free / cap.GIB:.1f} GiB free on {device}; loading may fail "
            "(try another --device, or --dtype bfloat16)",
            file=sys.stderr,
        )
    if args.dry_run:
        for image, _ in plan.todo:
            print(f"  would caption {cap.rel_name(plan.root, image)}")
        return 0
    try:
        captioner = cap.Captioner(args.model, device=device, dtype=dtype, max_pixels=args.max_pixels)
    except cap.CaptionError as e:
        return fail(str(e))
    bar = tqdm(total=len(plan.todo), desc="captioning", unit="image", file=sys.stderr, dynamic_ncols=True)

    def progress(items):  # type: ignore[no-untyped-def]
        for item in items:
            yield item
            bar.update(1)

    try:
        outcome = cap.caption_plan(
            plan,
            lambda image: captioner.caption(image, prompt=args.prompt, max_new_tokens=args.max_new_tokens),
            mode=args.mode,
            trigger=trigger,
            report=lambda line: bar.write(line, file=sys.stderr),
            progress=progress,
        )
    finally:
        bar.close()
    print(f"captions written: {len(outcome.written)}, failed: {len(outcome.failed)}")
    if outcome.stopped:
        return fail(f"stopped: {outcome.stopped}; the captions written so far are kept (rerun to resume)")
    return 1 if outcome.failed else 0
