"""``flux2-lora generate``: images from a model with a trained LoRA at a chosen scale."""

from __future__ import annotations

import argparse
from pathlib import Path

from flux2_lora.cli.common import fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate an image with a trained LoRA")
    p.add_argument("--model", default="demo", help="hub id, local diffusers folder, or 'demo'")
    p.add_argument("--variant", default="auto")
    p.add_argument("--lora", help="a .safetensors LoRA (diffusers or ComfyUI keys); omit for the base model")
    p.add_argument("--scale", type=float, default=1.0, help="LoRA strength")
    p.add_argument("--prompt", required=True)
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument(
        "--resolution", type=int, default=None, help="square side in pixels (default: the variant's)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flux2_lora.training.quiet import quiet_libraries

    quiet_libraries()
    from flux2_lora.config import ModelSection
    from flux2_lora.training.hardware import resolve_device, resolve_dtype
    from flux2_lora.training.model import (
        ModelLoadError,
        pipeline_class,
        resolve_model_path,
        resolve_text_encoder_layers,
    )
    from flux2_lora.variants import get_variant

    if args.lora and not Path(args.lora).is_file():
        return fail(f"--lora: {args.lora} does not exist")
    if not 1 <= args.steps <= 200:
        return fail("--steps: must be between 1 and 200")
    try:
        model = ModelSection(path=args.model, variant=args.variant)
        path, variant, _ = resolve_model_path(model)
        layers = resolve_text_encoder_layers(model, path, variant)
        device = resolve_device(args.device)
        dtype = resolve_dtype("auto", device)
        pipe = pipeline_class(variant).from_pretrained(path, dtype=dtype)
    except ModelLoadError as e:
        return fail(str(e))
    except Exception as e:
        return fail(f"--model: cannot load {args.model}: {e}")
    pipe.to(device)
    if args.lora:
        try:
            pipe.load_lora_weights(args.lora, adapter_name="lora")
        except Exception as e:
            return fail(f"--lora: {args.lora} is not a FLUX.2 LoRA this model can load: {e}")
        pipe.set_adapters(["lora"], adapter_weights=[args.scale])
    import torch

    res = args.resolution or get_variant(variant).default_resolution
    if res % 16:
        return fail("--resolution: must be a multiple of 16")
    image = pipe(
        prompt=args.prompt,
        height=res,
        width=res,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        generator=torch.Generator("cpu").manual_seed(args.seed),
        text_encoder_out_layers=layers,
    ).images[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    print(out)
    return 0
