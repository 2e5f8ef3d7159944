"""Every config field changes what the trainer does (or is refused with its reason).

Each test prepares a trainer on the demo (model, caches, adapter, optimizer; no training) or runs a
few steps, and looks at the effect of one field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from flux2_lora import runs
from flux2_lora.config.io import ConfigError
from flux2_lora.training.trainer import Trainer, run_training
from tests.conftest import MakeConfig
from tests.helpers import NEEDS_PRODIGY, assert_finished


def prepared(make_config: MakeConfig, *overrides: str) -> Trainer:
    t = Trainer(make_config(*overrides))
    t.setup()
    return t


def lora_modules(t: Trainer) -> list[str]:
    return [
        n[: -len(".lora_A.default")] for n, _ in t.transformer.named_modules() if n.endswith("lora_A.default")
    ]


def make_images(
    folder: Path, sizes: list[tuple[int, int]], captions: dict[int, str] | None = None, ext: str = ".txt"
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        img = Image.effect_noise((w, h), 80).convert("RGB")  # detail everywhere: any crop shift shows
        img.save(folder / f"img{i}.png")
        if captions and i in captions:
            (folder / f"img{i}{ext}").write_text(captions[i], encoding="utf-8")
    return folder


# ----------------------------------------------------------------------------------------- model
def test_model_dtype_sets_weights_and_mixed_precision(make_config: MakeConfig) -> None:
    t = prepared(make_config, "model.dtype=bfloat16")
    assert t.accelerator.mixed_precision == "bf16"
    base = t.transformer.transformer_blocks[0].attn.to_q.base_layer.weight
    assert base.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in t.lora_params)  # fp32 adapter copy
    t32 = prepared(make_config, "model.dtype=float32")
    assert t32.accelerator.mixed_precision == "no"


def test_model_device_cpu_and_missing_cuda(make_config: MakeConfig) -> None:
    from flux2_lora.training.model import ModelLoadError

    assert prepared(make_config, "model.device=cpu").device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match=r"model\.device"):
            Trainer(make_config("model.device=cuda:0")).setup()


def test_model_variant_must_match(make_config: MakeConfig) -> None:
    with pytest.raises(ConfigError, match=r"model\.variant"):
        make_config("model.variant=dev")


# ----------------------------------------------------------------------------------------- dataset
def test_dataset_path_resolution_and_captions(make_config: MakeConfig, tmp_path: Path) -> None:
    folder = make_images(
        tmp_path / "ds", [(96, 96), (96, 96), (96, 96)], {0: "one", 1: "two"}, ext=".caption"
    )
    t = prepared(
        make_config,
        f"dataset.path={folder}",
        "dataset.resolution=128",
        "dataset.caption_extension=.caption",
        "dataset.default_caption=fallback sks",
    )
    assert [i.caption for i in t.items] == ["one", "two", "fallback sks"]
    assert next(iter(t.latents.cache.values())).shape[-2:] == (8, 8)  # 128 px → 16 px per token
    t64 = prepared(
        make_config,
        f"dataset.path={folder}",
        "dataset.resolution=64",
        "dataset.caption_extension=.caption",
        "dataset.default_caption=''",
    )
    assert next(iter(t64.latents.cache.values())).shape[-2:] == (4, 4)
    assert t64.items[2].caption == ""  # no default caption given


def test_center_crop_and_random_flip_change_latents(make_config: MakeConfig, tmp_path: Path) -> None:
    folder = make_images(tmp_path / "wide", [(256, 96)], {0: "wide"})
    center = prepared(make_config, f"dataset.path={folder}", "dataset.center_crop=true")
    rand = prepared(make_config, f"dataset.path={folder}", "dataset.center_crop=false", "training.seed=3")
    assert not torch.allclose(center.latents.cache[(0, False)], rand.latents.cache[(0, False)])
    assert (0, True) not in center.latents.cache
    flip = prepared(make_config, f"dataset.path={folder}", "dataset.random_flip=true")
    assert not torch.allclose(flip.latents.cache[(0, True)], flip.latents.cache[(0, False)])
    flips = {bool(torch.rand(1, generator=torch.Generator().manual_seed(s)).item() < 0.5) for s in range(8)}
    assert flips == {True, False}


def test_repeats_lengthen_the_epoch(make_config: MakeConfig) -> None:
    assert prepared(make_config, "dataset.repeats=3").schedule.epoch_len == 3 * 12


# ----------------------------------------------------------------------------------------- lora
def test_lora_rank_alpha_dropout_dora_targets(make_config: MakeConfig) -> None:
    t = prepared(
        make_config,
        "lora.rank=4",
        "lora.alpha=8",
        "lora.dropout=0.25",
        "lora.use_dora=true",
        "lora.target_modules=[single]",
    )
    q = t.transformer.single_transformer_blocks[0].attn.to_qkv_mlp_proj
    assert q.r["default"] == 4 and q.scaling["default"] == 2.0
    assert isinstance(q.lora_dropout["default"], torch.nn.Dropout) and q.lora_dropout["default"].p == 0.25
    assert "default" in q.lora_magnitude_vector  # DoRA
    assert all(n.startswith("single_transformer_blocks") for n in lora_modules(t))
    plain = prepared(make_config, "lora.target_modules=[double-attn, attn.to_qkv_mlp_proj]")
    names = lora_modules(plain)
    assert (
        "transformer_blocks.0.attn.to_q" in names
        and "single_transformer_blocks.1.attn.to_qkv_mlp_proj" in names
    )
    assert "single_transformer_blocks.0.attn.to_out" not in names


# ----------------------------------------------------------------------------------------- training
@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("adamw", "AdamW"),
        ("adam", "Adam"),
        ("sgd", "SGD"),
        ("adafactor", "Adafactor"),
        pytest.param("prodigy", "Prodigy", marks=NEEDS_PRODIGY),
    ],
)
def test_optimizer_choice(make_config: MakeConfig, name: str, cls: str) -> None:
    t = prepared(make_config, f"training.optimizer={name}", "training.learning_rate=1e-3")
    assert type(t.optimizer.optimizer).__name__ == cls
    params = {n: p for n, p in t.transformer.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in params.items()}
    assert float(t.train_step(1)) > 0
    # lora_B starts at zero, so the first step's gradient reaches B only (A's is B·grad = 0): every B
    # must have moved, by a finite amount.
    moved = {n for n, p in params.items() if not torch.equal(p.detach(), before[n])}
    b_names = {n for n in params if ".lora_B." in n}
    assert b_names and b_names <= moved, sorted(b_names - moved)[:3]
    assert all(torch.isfinite(p).all() for p in params.values())


def test_adamw8bit_needs_cuda(make_config: MakeConfig) -> None:
    from flux2_lora.training.optim import OptimizerUnavailable

    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    pytest.importorskip("bitsandbytes", reason="needs bitsandbytes: pip install 'flux2-lora[quantization]'")
    with pytest.raises(OptimizerUnavailable, match=r"training\.optimizer: adamw8bit runs only on CUDA"):
        prepared(make_config, "training.optimizer=adamw8bit")


def test_adamw8bit_without_the_quantization_extra_says_what_to_install(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from flux2_lora.training.optim import OptimizerUnavailable

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if it were not installed
    with pytest.raises(
        OptimizerUnavailable, match=r"adamw8bit needs bitsandbytes.*flux2-lora\[quantization\]"
    ):
        prepared(make_config, "training.optimizer=adamw8bit")


def test_optimizer_hyperparameters_reach_the_optimizer(make_config: MakeConfig) -> None:
    g = prepared(
        make_config,
        "training.learning_rate=3e-4",
        "training.weight_decay=0.05",
        "training.adam_beta1=0.8",
        "training.adam_beta2=0.95",
        "training.adam_epsilon=1e-6",
    ).optimizer.param_groups[0]
    assert (g["initial_lr"], g["weight_decay"], g["betas"], g["eps"]) == (3e-4, 0.05, (0.8, 0.95), 1e-6)
    sgd = prepared(make_config, "training.optimizer=sgd", "training.momentum=0.9").optimizer.param_groups[0]
    assert sgd["momentum"] == 0.9


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear", "polynomial"])
def test_lr_schedule_and_warmup(schedule: str) -> None:
    from flux2_lora.config import TrainingSection
    from flux2_lora.training.optim import build_scheduler

    t = TrainingSection(learning_rate=1.0, max_steps=10, warmup_steps=2, lr_scheduler=schedule)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(t, opt)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[1] == 0.5 and lrs[2] == 1.0  # linear warmup
    if schedule == "constant":
        assert lrs[2:] == [1.0] * 8
    else:
        assert lrs[-1] < 0.5 and lrs == lrs[:2] + sorted(lrs[2:], reverse=True)
    if schedule == "cosine":
        assert abs(lrs[6] - 0.5) < 1e-6  # half way through the decay
    if schedule == "linear":
        assert abs(lrs[6] - 0.5) < 1e-6 and abs(lrs[4] - 0.75) < 1e-6


def test_max_grad_norm_clips_the_update(make_config: MakeConfig) -> None:
    def update(norm: str) -> float:
        t = prepared(
            make_config,
            "training.optimizer=sgd",
            "training.learning_rate=1.0",
            "training.weight_decay=0",
            f"training.max_grad_norm={norm}",
        )
        before = [p.detach().clone() for p in t.lora_params]
        float(t.train_step(1))
        return torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(t.lora_params, before))).item()

    assert update("1e-6") <= 1.01e-6
    assert update("0") > 1e-3


def test_batch_accumulation_seed_and_timesteps(make_config: MakeConfig) -> None:
    t = prepared(make_config, "training.batch_size=3", "training.gradient_accumulation_steps=2")
    assert t.accelerator.gradient_accumulation_steps == 2
    a, b = t.micro_batch(1, 0), t.micro_batch(1, 1)
    assert a["latents"].shape[0] == 3 and not torch.equal(a["noise"], b["noise"])
    other = prepared(make_config, "training.batch_size=3", "training.seed=7")
    assert not torch.equal(other.micro_batch(1, 0)["noise"], a["noise"])
    ln = prepared(
        make_config,
        "training.timestep_sampling=logit_normal",
        "training.logit_mean=3",
        "training.logit_std=0.5",
    )
    sig = torch.cat([ln.micro_batch(s, 0)["sigmas"] for s in range(1, 40)])
    assert (sig > 0.8).float().mean() > 0.9
    mode = prepared(make_config, "training.timestep_sampling=mode", "training.mode_scale=1.29")
    uni = torch.cat([t.micro_batch(s, 0)["sigmas"] for s in range(1, 60)])
    ms = torch.cat([mode.micro_batch(s, 0)["sigmas"] for s in range(1, 60)])
    assert ms.std() < uni.std()


def test_loss_weighting_changes_the_loss(make_config: MakeConfig) -> None:
    from flux2_lora.training.flow import flow_matching_loss

    t = prepared(make_config)
    batch = t.micro_batch(1, 0)
    batch.pop("dropout_seed")
    with torch.no_grad():
        plain = flow_matching_loss(t.model, weighting="none", **batch)
        weighted = flow_matching_loss(t.model, weighting="sigma_sqrt", **batch)
    assert not torch.isclose(plain, weighted)


def test_guidance_scale_feeds_dev_guidance_input(make_config: MakeConfig) -> None:
    t = prepared(make_config, "training.guidance_scale=3.5")
    assert t.micro_batch(1, 0)["guidance"] is None  # [klein]-architecture demo: no guidance input
    t.arch = dataclasses.replace(t.arch, guidance_embeds=True)  # as FLUX.2 [dev]
    g = t.micro_batch(1, 0)["guidance"]
    assert g is not None and torch.all(g == 3.5)


# ----------------------------------------------------------------------------------------- memory
def test_gradient_checkpointing_and_vae_options(make_config: MakeConfig) -> None:
    on = prepared(
        make_config, "memory.gradient_checkpointing=true", "memory.vae_slicing=true", "memory.vae_tiling=true"
    )
    off = prepared(make_config, "memory.gradient_checkpointing=false")
    assert on.transformer.is_gradient_checkpointing and not off.transformer.is_gradient_checkpointing
    assert on.pipe.vae.use_slicing and on.pipe.vae.use_tiling
    assert not off.pipe.vae.use_slicing and not off.pipe.vae.use_tiling


def test_caching_switches(make_config: MakeConfig) -> None:
    cached = prepared(make_config)
    assert cached.latents.cache and cached.pipe.text_encoder is None
    live = prepared(make_config, "memory.cache_latents=false", "memory.cache_text_embeddings=false")
    assert not live.latents.cache and live.pipe.text_encoder is not None
    assert not any(i.caption in live.prompts.cache for i in live.items)
    loss_live = float(live.train_step(1))
    assert loss_live > 0


def test_cpu_offload_moves_frozen_components_off_the_gpu(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    offloaded: list[str] = []
    monkeypatch.setattr(Trainer, "_offload", lambda self, m: offloaded.append(type(m).__name__))
    prepared(
        make_config,
        "memory.cpu_offload=true",
        "memory.cache_text_embeddings=false",
        "memory.cache_latents=false",
    )
    assert sorted(offloaded) == ["AutoencoderKLFlux2", "Qwen3ForCausalLM"]
    offloaded.clear()
    prepared(
        make_config,
        "memory.cpu_offload=false",
        "memory.cache_text_embeddings=false",
        "memory.cache_latents=false",
    )
    assert offloaded == []


def test_int8_quantization_trains(make_config: MakeConfig) -> None:
    pytest.importorskip("torchao")
    t = prepared(make_config, "memory.quantization=int8")
    w = t.transformer.transformer_blocks[0].attn.to_q.base_layer.weight
    assert type(w).__name__ != "Parameter" or "int8" in str(type(w.data)).lower()
    assert t.transformer.x_embedder.weight.dtype == torch.float32  # kept in the training dtype
    assert float(t.train_step(1)) > 0


def test_nf4_quantization_trains(make_config: MakeConfig) -> None:
    bnb = pytest.importorskip("bitsandbytes")
    t = prepared(make_config, "memory.quantization=nf4")
    assert isinstance(t.transformer.transformer_blocks[0].attn.to_q.base_layer, bnb.nn.Linear4bit)
    assert float(t.train_step(1)) > 0


# ----------------------------------------------------------------------------------------- validation / output / logging
@pytest.mark.slow
def test_validation_fields(make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import Flux2KleinPipeline

    calls: list[dict[str, Any]] = []
    original = Flux2KleinPipeline.__call__

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Flux2KleinPipeline, "__call__", spy)
    config = make_config(
        "validation.enabled=true",
        "validation.every_n_steps=2",
        "validation.num_samples=2",
        "validation.prompts=[a red circle, a blue square]",
        "validation.num_inference_steps=3",
        "validation.guidance_scale=2.5",
        "training.warmup_steps=0",
    )
    assert_finished(run_training(config), config)
    index = runs.read_jsonl(Path(config.output.dir) / runs.SAMPLES_INDEX)
    assert [(r["step"], r["prompt"]) for r in index] == [
        (s, p) for s in (2, 4) for p in ("a red circle", "a blue square") for _ in range(2)
    ]
    assert all(c["num_inference_steps"] == 3 and c["guidance_scale"] == 2.5 for c in calls)
    assert all("negative_prompt_embeds" in c for c in calls)  # [klein] CFG above 1
    calls.clear()
    off = make_config("validation.enabled=false", out=Path(config.output.dir).parent / "off")
    assert_finished(run_training(off), off)
    assert calls == [] and not (Path(off.output.dir) / runs.SAMPLES_DIR).exists()


def test_output_and_logging_fields(make_config: MakeConfig, tmp_path: Path) -> None:
    from safetensors import safe_open

    out = tmp_path / "a"
    config = make_config(
        "output.save_optimizer_state=false",
        "output.save_dtype=bfloat16",
        "output.export_comfyui=true",
        "output.checkpoint_every=2",
        "logging.tensorboard=true",
        "logging.log_every=2",
        "training.warmup_steps=0",
        out=out,
    )
    assert_finished(run_training(config), config)
    ckpt = runs.latest_checkpoint(out)
    assert ckpt is not None and not (ckpt / "optimizer.pt").exists()
    with safe_open(str(out / runs.LORA_FILE), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.bfloat16
    assert (out / runs.COMFYUI_LORA_FILE).is_file()
    assert list((out / runs.TENSORBOARD_DIR).glob("events.*"))
    assert [m["step"] for m in runs.read_jsonl(out / runs.METRICS_FILE)] == [2, 4]

    out_b = tmp_path / "b"
    config_b = make_config(
        "output.save_optimizer_state=true",
        "logging.tensorboard=false",
        "training.warmup_steps=0",
        "output.checkpoint_every=2",
        out=out_b,
    )
    assert_finished(run_training(config_b), config_b)
    assert (runs.latest_checkpoint(out_b) / "optimizer.pt").is_file()
    assert not (out_b / runs.TENSORBOARD_DIR).exists() and not (out_b / runs.COMFYUI_LORA_FILE).exists()


def test_wandb_logs_offline_without_a_key(
    make_config: MakeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    seen: list[dict[str, Any]] = []
    original = wandb.init

    def spy(**kwargs: Any) -> Any:
        seen.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(wandb, "init", spy)
    out = tmp_path / "w"
    config = make_config(
        "logging.wandb=true", "logging.wandb_project=my-proj", "training.warmup_steps=0", out=out
    )
    assert_finished(run_training(config), config)
    assert seen and seen[0]["project"] == "my-proj" and seen[0]["mode"] == "offline"
    assert list((out / "wandb").glob("offline-run-*")), "no offline W&B run written"


# ----------------------------------------------------------------------------------------- issue 6: buckets and captions
def test_bucketing_trains_mixed_shapes_without_mixing_or_cropping(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    from flux2_lora.data.buckets import crop_after_scaling

    sizes = [(96, 160), (160, 96), (128, 128), (100, 170), (170, 100), (120, 120)]
    folder = make_images(tmp_path / "mixed", sizes, {i: f"image {i}" for i in range(6)})
    t = prepared(
        make_config,
        f"dataset.path={folder}",
        "dataset.bucketing=true",
        "dataset.bucket_step=16",
        "dataset.resolution=64",
        "training.batch_size=2",
    )
    buckets = {i.bucket for i in t.items}
    assert len(buckets) == 3  # portrait, landscape, square
    for item, (w, h) in zip(t.items, sizes):
        cx, cy = crop_after_scaling(w, h, item.bucket)
        assert cx < 16 and cy < 16
        lat = t.latents.cache[(t.items.index(item), False)]
        assert lat.shape[-2:] == (item.bucket[1] // 16, item.bucket[0] // 16)
    for step in range(1, 7):
        pairs = t.schedule.micro_batch(step, 0, 0, 1, 1)
        assert len({t.items[i].bucket for i, _ in pairs}) == 1
        assert t.micro_batch(step, 0)["latents"].shape[0] == len(pairs)
    assert float(t.train_step(1)) > 0
    square = prepared(make_config, f"dataset.path={folder}", "dataset.resolution=64")
    assert {tuple(v.shape[-2:]) for v in square.latents.cache.values()} == {(4, 4)}


def test_trigger_word_dropout_shuffle_and_folder_repeats(
    make_config: MakeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "ds"
    make_images(root / "3_faces", [(64, 64)], {0: "red, round, small, shiny"})
    make_images(root / "plain", [(64, 64)], {0: "[trigger] blue, square"})
    t = prepared(
        make_config,
        f"dataset.path={root}",
        "dataset.trigger_word=sks",
        "dataset.shuffle_tags=true",
        "dataset.keep_tags=1",
        "dataset.caption_dropout=0.5",
        "dataset.resolution=64",
    )
    faces, plain = t.items
    assert faces.caption == "sks, red, round, small, shiny" and plain.caption == "sks blue, square"
    assert faces.repeats == 3 and plain.repeats == 1 and t.schedule.epoch_len == 4
    assert len(set(faces.variants)) > 1 and all(v.startswith("sks, ") for v in faces.variants)
    used: list[str] = []

    def recording(batch: Callable[..., Any]) -> Callable[..., Any]:
        def record(caps: list[str], *a: Any) -> Any:
            used.extend(caps)
            return batch(caps, *a)

        return record

    monkeypatch.setattr(t.prompts, "batch", recording(t.prompts.batch))
    for step in range(1, 41):
        t.micro_batch(step, 0)
    assert 0.3 < used.count("") / len(used) < 0.7  # caption dropout
    assert len({c for c in used if c.startswith("sks, red")}) > 2  # shuffled orders
    plain_t = prepared(make_config, f"dataset.path={root}", "dataset.resolution=64", "dataset.keep_tags=1")
    assert plain_t.items[0].caption == "red, round, small, shiny" and plain_t.items[0].variants is None
    used.clear()
    monkeypatch.setattr(plain_t.prompts, "batch", recording(plain_t.prompts.batch))
    for step in range(1, 21):
        plain_t.micro_batch(step, 0)
    assert "" not in used


def test_timestep_shift_reaches_the_trainer(make_config: MakeConfig) -> None:
    plain = prepared(make_config)
    shifted = prepared(make_config, "training.timestep_shift=fixed", "training.shift=5")
    a = torch.cat([plain.micro_batch(s, 0)["sigmas"] for s in range(1, 60)]).mean()
    b = torch.cat([shifted.micro_batch(s, 0)["sigmas"] for s in range(1, 60)]).mean()
    assert b > a + 0.15


def test_a_runs_first_steps_are_pinned(make_config: MakeConfig) -> None:
    """The quickstart's images, σ and noise at steps 1, 2 and 7 for seed 42: what a resumed run must replay
    (see tests/training/test_batches.py for why these are pinned)."""
    t = prepared(make_config, "training.timestep_sampling=logit_normal")
    assert (t.config.training.seed, t.config.training.batch_size) == (42, 2)
    assert t.schedule is not None
    # Changed once on purpose (issue 18): σ is drawn before the noise, so it no longer depends on the
    # device (CUDA runs kept their σ; CPU runs of earlier versions resume with other σ and noise).
    expected = {
        1: ([(9, 0), (0, 1)], [0.489, 0.375], [-0.2381, -0.9502, -1.61383]),
        2: ([(7, 2), (1, 3)], [0.786, 0.76], [0.09304, 0.51031, -1.03566]),
        7: ([(0, 12), (10, 13)], [0.581, 0.664], [0.33736, 0.585, 0.91457]),
    }
    for step, (pairs, sigmas, noise) in expected.items():
        assert t.schedule.micro_batch(step, 0, 0, 1, 1) == pairs
        batch = t.micro_batch(step, 0)
        assert batch["sigmas"].tolist() == pytest.approx(sigmas, abs=1e-6)
        assert batch["noise"].flatten()[:3].tolist() == pytest.approx(noise, abs=1e-5)
    # σ is the first draw of the micro-batch's generator, whatever the device draws the noise with.
    from flux2_lora.training.batches import derive_seed
    from flux2_lora.training.flow import sample_density, sigmas_from_density

    first = sample_density("logit_normal", 2, generator=torch.Generator().manual_seed(derive_seed(42, 6, 0)))
    assert t.micro_batch(1, 0)["sigmas"].tolist() == sigmas_from_density(first).tolist()


@pytest.mark.gpu
def test_cpu_and_cuda_draw_the_same_sigmas(make_config: MakeConfig) -> None:
    """One seed, the same timesteps on CPU and on a GPU (the noise is drawn on the device, so it differs)."""
    cpu = prepared(make_config, "model.device=cpu", "model.dtype=float32")
    cuda = prepared(make_config, "model.device=cuda", "model.dtype=float32")
    for step in (1, 2, 7, 30):
        a, b = cpu.micro_batch(step, 0), cuda.micro_batch(step, 0)
        assert b["noise"].device.type == "cuda" and b["sigmas"].device.type == "cuda"
        assert b["sigmas"].cpu().tolist() == pytest.approx(a["sigmas"].tolist(), abs=1e-6), step
