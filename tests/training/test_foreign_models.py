"""FLUX.2 folders that no one here wrote: small pipelines like diffusers' own test components, saved with
``save_pretrained``, train through the CLI. Their text encoders have 1–2 layers, far fewer than the
pipelines' default hidden-state layers (10, 20, 30) / (9, 18, 27)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flux2_lora import runs
from tests.helpers import cli, sets

# Every message part is read from the 'content' list, as FLUX.2 [dev]'s pipeline sends it.
_LIST_CONTENT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- for part in message['content'] %}{%- if part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}{%- endfor %}"
)


def _small_vae() -> Any:
    from diffusers import AutoencoderKLFlux2

    # One block: no downsampling at all, one latent channel (4 after FLUX.2's 2×2 patchify).
    return AutoencoderKLFlux2(
        sample_size=32,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def _small_transformer(guidance: bool) -> Any:
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        num_attention_heads=2,
        attention_head_dim=16,
        joint_attention_dim=16,  # one text-encoder layer of width 16
        axes_dims_rope=[4, 4, 4, 4],
        guidance_embeds=guidance,
    )


def build_foreign_pipeline(kind: str, folder: Path) -> Path:
    """'klein': Qwen3 encoder with 2 layers; 'dev': Mistral 3 encoder with 1 layer (plus its vision tower)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Pipeline

    from flux2_lora.training.demo_model import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    encoder: torch.nn.Module
    if kind == "klein":
        from transformers import Qwen3Config, Qwen3ForCausalLM

        encoder = Qwen3ForCausalLM(
            Qwen3Config(
                vocab_size=len(tokenizer),
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                max_position_embeddings=512,
            )
        )
        cls, guidance = Flux2KleinPipeline, False
    else:
        from transformers import Mistral3Config, Mistral3ForConditionalGeneration

        tokenizer.chat_template = _LIST_CONTENT_TEMPLATE
        encoder = Mistral3ForConditionalGeneration(
            Mistral3Config(
                text_config={
                    "model_type": "mistral",
                    "vocab_size": len(tokenizer),
                    "hidden_size": 16,
                    "intermediate_size": 24,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "num_key_value_heads": 1,
                    "head_dim": 8,
                    "max_position_embeddings": 512,
                },
                vision_config={
                    "model_type": "pixtral",
                    "hidden_size": 8,
                    "intermediate_size": 16,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "image_size": 24,
                    "patch_size": 8,
                },
                image_token_index=1,
            )
        )
        cls, guidance = Flux2Pipeline, True
    pipe = cls(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_small_vae(),
        text_encoder=encoder,
        tokenizer=tokenizer,
        transformer=_small_transformer(guidance),
    )
    pipe.save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "pipeline"), [("klein", "Flux2KleinPipeline"), ("dev", "Flux2Pipeline")])
def test_a_foreign_small_flux2_folder_trains_two_steps(tmp_path: Path, kind: str, pipeline: str) -> None:
    model = build_foreign_pipeline(kind, tmp_path / f"tiny-{kind}")
    out = tmp_path / "run"
    args = sets(
        f"model.path={model}",
        f"output.dir={out}",
        "dataset.resolution=32",
        "training.max_steps=2",
        "training.warmup_steps=0",
        "validation.every_n_steps=1",
        "validation.num_inference_steps=2",
        "logging.tensorboard=false",
    )
    checked = cli("validate", "--preset", "quickstart", *args)
    assert checked.returncode == 0 and "config is valid" in checked.stdout, checked.stderr
    estimate = cli("estimate", "--preset", "quickstart", *args)
    assert estimate.returncode == 0, estimate.stderr
    assert estimate.stdout.startswith("custom FLUX.2 model (1 + 1 blocks") and pipeline in estimate.stdout
    assert "klein-9b" not in estimate.stdout and "[klein] 9B" not in estimate.stdout
    proc = cli("train", "--preset", "quickstart", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert runs.read_status(out).state == "finished" and (out / runs.LORA_FILE).is_file()
    assert len(list((out / runs.SAMPLES_DIR).glob("*.png"))) >= 2
    bad = cli("validate", "--preset", "quickstart", *args, *sets("model.text_encoder_layers=[9, 18, 27]"))
    assert (
        bad.returncode == 2 and "model.text_encoder_layers: 9, 18, 27 not in the text encoder" in bad.stderr
    )
