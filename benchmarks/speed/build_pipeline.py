"""A FLUX.2 [klein] 4B pipeline folder with random weights, for speed runs on a GPU (nothing downloaded).

The transformer has the real klein-4B config (3.88B parameters: what steps/s depends on). The text
encoder has the real output width (3 × 2560 = joint_attention_dim) but one narrow head and a tiny MLP
per layer: it only runs while captions are cached, before the timed steps. The VAE has diffusers'
default FLUX.2 config. Also writes a few smooth random 1024² images.

    python benchmarks/speed/build_pipeline.py --out /tmp/klein4b --images /tmp/klein4b-images
    python benchmarks/speed/build_pipeline.py --out /tmp/tiny --images /tmp/tiny-images --tiny   # CPU check
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

TE_LAYERS = 28  # the pipeline stacks hidden states 9, 18 and 27


def build(out: Path, tiny: bool, transformer_overrides: dict | None = None) -> dict:
    """``transformer_overrides`` change the transformer's config after the --tiny sizes (other CPU sizes)."""
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from flux2_lora.training.demo_model import build_tokenizer, flux2_scheduler
    from flux2_lora.variants import VARIANTS

    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = VARIANTS["klein-4b"].transformer.diffusers_config()
    if tiny:
        config.update(num_layers=1, num_single_layers=1, num_attention_heads=2, attention_head_dim=16)
        config.update(axes_dims_rope=(4, 4, 4, 4), joint_attention_dim=96)
    config.update(transformer_overrides or {})
    hidden = config["joint_attention_dim"] // 3
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # built where it runs: no fp32 CPU copy of 4B parameters
            transformer = Flux2Transformer2DModel(**config)
            text_encoder = Qwen3ForCausalLM(
                Qwen3Config(
                    vocab_size=len(tokenizer),
                    hidden_size=hidden,
                    intermediate_size=64,
                    num_hidden_layers=TE_LAYERS,
                    num_attention_heads=1,
                    num_key_value_heads=1,
                    head_dim=128 if not tiny else 16,
                    max_position_embeddings=1024,
                    tie_word_embeddings=True,
                )
            )
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():  # small weights keep bf16 activations finite (values do not change speed)
        for module in [*transformer.modules(), *text_encoder.modules()]:
            if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
                module.weight.normal_(0.0, 0.02)
    vae = AutoencoderKLFlux2() if not tiny else AutoencoderKLFlux2(block_out_channels=(32, 32, 32, 32))
    scheduler = flux2_scheduler()
    pipe = Flux2KleinPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(str(out))
    return {
        "transformer_params": sum(p.numel() for p in transformer.parameters()),
        "text_encoder_params": sum(p.numel() for p in text_encoder.parameters()),
        "device": str(device),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def write_images(folder: Path, count: int, size: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR).save(
            folder / f"img_{i:02d}.png"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (checks the path)")
    args = parser.parse_args()
    info = build(args.out, args.tiny)
    write_images(args.images, args.num_images, 64 if args.tiny else 1024)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
