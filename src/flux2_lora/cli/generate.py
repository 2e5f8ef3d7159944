"""``flux2-lora generate``: images from a model with a trained LoRA at a chosen scale."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from flux2_lora.cli.common import add_debug_arg, add_field_args, fail, fields_from_args, show
from flux2_lora.cli.quiet import quiet_libraries
from flux2_lora.config import GenerationSettings, ModelSection

# The options are the fields of GenerationSettings (shared with the UI's Test LoRA tab and the API) and
# of the config's model section: help, bounds and defaults come from there.
SETTINGS = tuple(GenerationSettings.model_fields)
MODEL_FIELDS = ("path", "variant", "device")
FLAGS = {"path": ["--model"]}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate an image with a trained LoRA")
    add_field_args(
        p,
        ModelSection,
        MODEL_FIELDS,
        flags=FLAGS,
        helps={"device": "Where to generate: auto (CUDA when present, else CPU), cpu, cuda or cuda:N."},
    )
    p.add_argument("--lora", help="a .safetensors LoRA (diffusers or ComfyUI keys); omit for the base model")
    add_field_args(p, GenerationSettings, SETTINGS, required=("prompt",))
    p.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="IMAGE",
        help="an input image to edit (edit LoRAs; FLUX.2's image= argument); repeat for several, in order",
    )
    p.add_argument(
        "--reference-max-pixels",
        type=int,
        default=0,
        metavar="N",
        help="largest reference area in pixels (the run's dataset.reference_max_pixels); 0: FLUX.2's caps",
    )
    p.add_argument("--out", required=True, help="PNG file to write")
    add_debug_arg(p)
    p.set_defaults(func=run)


def run_sampling(lora: str | None) -> tuple[dict[str, Any], dict[str, Any], Path | None]:
    """The model and the sampling settings (steps, guidance, resolution) of the run a LoRA file sits in:
    a LoRA is then drawn the way its run's validation samples were (the UI's Test LoRA does the same).
    Empty where the LoRA is not in a run folder with a readable config.yaml."""
    from flux2_lora import runs
    from flux2_lora.config import TrainConfig
    from flux2_lora.config.io import read_yaml, validate_dict

    cfg_file = Path(lora).parent / runs.CONFIG_FILE if lora else None
    if cfg_file is None or not cfg_file.is_file():
        return {}, {}, None
    data, _ = read_yaml(cfg_file)
    parsed, _ = validate_dict(data if isinstance(data, dict) else {})
    if not isinstance(parsed, TrainConfig):
        return {}, {}, None
    own = GenerationSettings.for_run(parsed).model_dump(include={"steps", "guidance", "resolution"})
    return {"path": parsed.model.path, "variant": parsed.model.variant}, own, cfg_file


def run(args: argparse.Namespace) -> int:
    run_model, run_settings, cfg_file = run_sampling(args.lora)
    model = fields_from_args(args, ModelSection, MODEL_FIELDS, flags=FLAGS, defaults=run_model)
    settings = fields_from_args(args, GenerationSettings, SETTINGS, defaults=run_settings)
    if model is None or settings is None:
        return 2
    taken = [
        f"{k} {run_settings[k]}"
        for k in ("steps", "guidance")
        if k in run_settings and getattr(args, k, None) is None
    ]
    if cfg_file is not None and taken:
        print(f"{', '.join(taken)}: the run's own sampling settings ({show(cfg_file)})", file=sys.stderr)
    if not settings.prompt.strip():
        return fail("--prompt: is empty")
    if args.lora and not Path(args.lora).is_file():
        return fail(f"--lora: {args.lora} does not exist")
    problem = _reference_problem(args.reference, args.reference_max_pixels)
    if problem:
        return fail(f"--reference: {problem}")

    quiet_libraries(args.debug)
    from flux2_lora.training.hardware import resolve_device, resolve_dtype
    from flux2_lora.training.model import (
        ModelLoadError,
        pipeline_class,
        resolve_model_path,
        resolve_text_encoder_layers,
    )
    from flux2_lora.variants import get_variant

    try:
        path, variant, _ = resolve_model_path(model)
        layers = resolve_text_encoder_layers(model, path, variant)
        device = resolve_device(model.device)
        dtype = resolve_dtype("auto", device)
        pipe = pipeline_class(variant).from_pretrained(path, dtype=dtype)
    except ModelLoadError as e:
        return fail(str(e))
    except Exception as e:
        return fail(f"--model: cannot load {model.path}: {e}")
    pipe.to(device)
    if args.lora:
        try:
            pipe.load_lora_weights(args.lora, adapter_name="lora")
        except Exception as e:
            return fail(f"--lora: {args.lora} is not a FLUX.2 LoRA this model can load: {e}")
        pipe.set_adapters(["lora"], adapter_weights=[settings.scale])
    import torch

    from flux2_lora.data.scan import DatasetError
    from flux2_lora.training.sampling import reference_images

    extra = {}
    if args.reference:
        try:  # sized as the run trained them (reference_size), as its validation samples are drawn
            extra["image"] = reference_images([Path(r) for r in args.reference], args.reference_max_pixels)
        except DatasetError as e:
            return fail("--reference: " + str(e).removeprefix("validation.references: "))
    res = settings.resolution or get_variant(variant).default_resolution
    image = pipe(
        prompt=settings.prompt,
        height=res,
        width=res,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance,
        generator=torch.Generator("cpu").manual_seed(settings.seed),
        text_encoder_out_layers=layers,
        **extra,
    ).images[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    print(out)
    return 0


def _reference_problem(references: list[str], max_pixels: int) -> str | None:
    """Why the --reference images cannot be used (missing, not an image, a size FLUX.2 refuses), or None."""
    from flux2_lora.data.references import oriented_size, size_problem

    if max_pixels < 0:
        return "--reference-max-pixels must be 0 or more"
    for r in references:
        if not Path(r).is_file():
            return f"{r} does not exist"
        try:
            w, h = oriented_size(Path(r))
        except Exception as e:  # PIL raises many types on a bad file; the message names the file
            return f"{r} is not an image this program can read ({type(e).__name__})"
        why = size_problem(w, h, len(references), max_pixels)
        if why:
            return f"{r}: {why}"
    return None
