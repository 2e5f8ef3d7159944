"""Edit training: reference tokens and ids exactly as diffusers' FLUX.2 pipelines build them at inference,
the loss on target tokens only, batches grouped by target and reference shapes, and whole edit runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from flux2_lora import runs
from flux2_lora.config.io import load_config
from flux2_lora.training.batches import Item, LatentSource, SampleSchedule, pack, pack_references
from flux2_lora.training.flow import flow_matching_loss


def _vae() -> Any:
    from diffusers import AutoencoderKLFlux2

    from flux2_lora.training.demo_model import ensure_demo_model

    return AutoencoderKLFlux2.from_pretrained(ensure_demo_model(), subfolder="vae")


def _noise_image(path: Path, size: tuple[int, int], seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    data = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(data).save(path)
    return path


# (width, height) of each sample's references: one reference; two of different sizes.
CASES = {"one": [(96, 64)], "two": [(64, 64), (80, 128)]}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_tokens_and_ids_equal_diffusers_for_a_batch_of_three(tmp_path: Path, case: str) -> None:
    from diffusers import Flux2KleinPipeline, Flux2Pipeline

    sizes = CASES[case]
    config, _ = load_config(presets=["quickstart-edit"], overrides=[f"output.dir={tmp_path}/run"])
    vae = _vae()
    items = []
    for b in range(3):  # three samples, each with its own images of the same shapes
        target = _noise_image(tmp_path / f"t{b}.png", (64, 64), 100 + b)
        refs = tuple(_noise_image(tmp_path / f"r{b}_{k}.png", s, 10 * b + k) for k, s in enumerate(sizes))
        items.append(Item(target, "edit", references=refs, reference_sizes=tuple(sizes)))
    source = LatentSource(items, config, vae, torch.device("cpu"))
    source.fill_cache()
    ours = pack_references(
        [source.references(b, False) for b in range(3)], torch.device("cpu"), torch.float32
    )
    assert ours is not None
    tokens, ids = ours
    x0 = torch.stack([source.get(b, False, 0) for b in range(3)])
    target_tokens, target_ids = pack(x0)

    # What the pipelines build at inference: their own preprocessing of the same files, their encoder.
    for cls in (Flux2Pipeline, Flux2KleinPipeline):
        pipe: Any = cls(scheduler=None, vae=vae, text_encoder=None, tokenizer=None, transformer=None)
        for b, item in enumerate(items):
            pixels = []
            for ref in item.references:
                im = Image.open(ref).convert("RGB")
                pipe.image_processor.check_image_input(im)
                w, h = im.size
                pixels.append(pipe.image_processor.preprocess(im, height=h, width=w, resize_mode="crop"))
            want_tokens, want_ids = cls.prepare_image_latents(
                pipe, pixels, batch_size=1, generator=None, device=torch.device("cpu"), dtype=torch.float32
            )
            assert torch.equal(ids[b], want_ids[0]), (cls.__name__, b)  # element for element
            assert ids.dtype == want_ids.dtype == target_ids.dtype
            # Pixels normalised the same up to rounding (x/127.5 - 1 vs 2·x/255 - 1), so tokens agree to fp32.
            torch.testing.assert_close(tokens[b], want_tokens[0], atol=1e-5, rtol=1e-5)
            # Given the very same pixels, the encoding is identical.
            ours_from_theirs = [_encode(vae, p) for p in pixels]
            mine = pack_references([ours_from_theirs], torch.device("cpu"), torch.float32)
            assert mine is not None and torch.equal(mine[0][0], want_tokens[0])
            # The transformer's image ids: target then references, as the pipeline concatenates them.
            want_all = torch.cat([cls._prepare_latent_ids(x0[b : b + 1]), want_ids], dim=1)
            assert torch.equal(torch.cat([target_ids[b : b + 1], ids[b : b + 1]], dim=1), want_all)
    assert tokens.shape[1] == sum((w // 16) * (h // 16) for w, h in sizes) and target_tokens.shape[0] == 3


def _encode(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    from flux2_lora.training.batches import encode_images

    return encode_images(vae, pixels)[0]


class _Spy(torch.nn.Module):
    """A transformer that records its inputs and predicts garbage on the reference tokens."""

    def __init__(self, target_pred: torch.Tensor):
        super().__init__()
        self.target_pred = target_pred
        self.seen: dict[str, torch.Tensor] = {}

    def forward(self, hidden_states: torch.Tensor, **kw: Any) -> tuple[torch.Tensor]:
        self.seen = {"hidden_states": hidden_states, **{k: v for k, v in kw.items() if torch.is_tensor(v)}}
        n = self.target_pred.shape[1]
        garbage = torch.full_like(hidden_states[:, n:], 1e6)
        return (torch.cat([self.target_pred, garbage], dim=1),)


def test_loss_appends_references_after_the_target_and_scores_the_target_only() -> None:
    b, n, m, c = 3, 4, 6, 8
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(b, n, c, generator=g), torch.randn(b, n, c, generator=g)
    refs, ref_ids = torch.randn(b, m, c, generator=g), torch.randint(0, 9, (b, m, 4), generator=g)
    latent_ids = torch.zeros(b, n, 4, dtype=torch.int64)
    pred = torch.randn(b, n, c, generator=g)
    spy = _Spy(pred)
    sigmas = torch.tensor([0.2, 0.5, 0.9])
    loss = flow_matching_loss(
        spy,
        latents=latents,
        latent_ids=latent_ids,
        prompt_embeds=torch.zeros(b, 2, 4),
        text_ids=torch.zeros(b, 2, 4, dtype=torch.int64),
        sigmas=sigmas,
        noise=noise,
        guidance=None,
        reference_latents=refs,
        reference_ids=ref_ids,
    )
    seen = spy.seen
    assert torch.equal(seen["hidden_states"][:, n:], refs)  # clean references after the noisy target
    noisy = (1 - sigmas.view(-1, 1, 1)) * latents + sigmas.view(-1, 1, 1) * noise
    torch.testing.assert_close(seen["hidden_states"][:, :n], noisy)
    assert torch.equal(seen["img_ids"], torch.cat([latent_ids, ref_ids], dim=1))
    assert torch.equal(seen["timestep"], sigmas)  # one timestep per sample, for all its image tokens
    assert loss.item() == pytest.approx(((pred - (noise - latents)) ** 2).mean().item(), rel=1e-6)


def test_edit_batches_group_by_target_and_reference_shapes() -> None:
    groups = [((64, 64), ((64, 64),)), ((64, 64), ((64, 64), (32, 32))), ((64, 64), ())] * 4
    s = SampleSchedule([1] * len(groups), seed=3, batch_size=2, buckets=groups)
    for step in range(1, 40):
        batch = s.micro_batch(step, 0, 0, 1, 1)
        assert len({groups[i] for i, _ in batch}) == 1


def test_an_edit_sample_with_no_references_packs_as_text_to_image() -> None:
    assert pack_references([[], []], torch.device("cpu"), torch.float32) is None


def _metrics_eval(out: Path) -> list[tuple[int, float]]:
    rows = runs.read_jsonl(out / runs.EVAL_FILE)
    return [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]


@pytest.mark.slow
def test_quickstart_edit_eval_loss_on_held_out_pairs_falls(tmp_path: Path) -> None:
    from flux2_lora.training.trainer import run_training
    from tests.helpers import assert_finished

    out = tmp_path / "qe"
    config, _ = load_config(
        presets=["quickstart-edit"], overrides=[f"output.dir={out}", "logging.tensorboard=false"]
    )
    assert_finished(run_training(config), config)
    evals = _metrics_eval(out)
    assert [s for s, _ in evals] == [0, 40, 80, 120], evals
    assert evals[-1][1] < evals[0][1] * 0.9, evals
    samples = runs.read_jsonl(out / runs.SAMPLES_INDEX)
    assert samples and all((out / s["file"]).is_file() for s in samples)
    log = (out / runs.LOG_FILE).read_text()
    assert "eval loss: 3 image(s)" in log
    assert json.loads((out / runs.STATUS_FILE).read_text())["state"] == "finished"


@pytest.mark.slow
def test_an_edit_lora_loads_into_flux2_klein_pipeline_and_changes_its_image_output(tmp_path: Path) -> None:
    """Trained with references on a folder saved from small FLUX.2 [klein] components."""
    from diffusers import Flux2KleinPipeline

    from flux2_lora.training.trainer import run_training
    from tests.helpers import assert_finished
    from tests.training.test_foreign_models import build_foreign_pipeline

    model = build_foreign_pipeline("klein", tmp_path / "tiny-klein")
    data = tmp_path / "data"
    (data / "refs").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (64, 64), (60 * i, 100, 200 - 40 * i)).save(data / f"p{i}.png")
        _noise_image(data / "refs" / f"p{i}.png", (64, 64), i)
        (data / f"p{i}.txt").write_text(f"turn the noise into colour {i}")
    out = tmp_path / "run"
    overrides = [
        f"model.path={model}",
        f"dataset.path={data}",
        "dataset.reference_path=refs",
        "dataset.resolution=32",
        f"output.dir={out}",
        "training.max_steps=8",
        "training.warmup_steps=0",
        "validation.eval_images=0",
        "validation.every_n_steps=8",
        "validation.num_inference_steps=2",
        "logging.tensorboard=false",
    ]
    config, issues = load_config(presets=["quickstart-edit"], overrides=overrides)
    assert config is not None, issues
    assert_finished(run_training(config), config)
    sample = runs.read_jsonl(out / runs.SAMPLES_INDEX)
    assert sample and (out / sample[-1]["file"]).is_file()  # drawn through image=

    from flux2_lora.training.batches import auto_out_layers

    pipe = Flux2KleinPipeline.from_pretrained(model)
    layers = auto_out_layers(pipe)  # its 2-layer encoder lacks the pipeline's default (9, 18, 27)
    reference = Image.open(data / "refs" / "p1.png").convert("RGB")

    def generate() -> torch.Tensor:
        return pipe(
            prompt="turn the noise into colour 1",
            image=[reference],
            height=32,
            width=32,
            num_inference_steps=2,
            guidance_scale=1.0,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
            text_encoder_out_layers=layers,
        ).images

    base = generate()
    pipe.load_lora_weights(str(out / runs.LORA_FILE), adapter_name="edit")  # diffusers' own loader
    assert (generate() - base).abs().max() > 1e-3
    pipe.set_adapters(["edit"], adapter_weights=[0.0])
    torch.testing.assert_close(generate(), base, atol=1e-6, rtol=0)


EDIT_RESUME = (
    "training.max_steps=8",
    "output.checkpoint_every=2",
    "lora.dropout=0.1",
    "dataset.random_flip=true",
    "training.gradient_accumulation_steps=2",
    "validation.enabled=false",
    "validation.eval_images=0",
    "logging.tensorboard=false",
    "logging.log_every=1",
    "training.warmup_steps=1",
)


@pytest.mark.slow
def test_edit_run_kill_9_then_resume_latest_gives_the_same_lora(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from flux2_lora.training.trainer import run_training
    from tests.helpers import assert_finished, cli, held_trainer, sets

    ref, killed = tmp_path / "ref", tmp_path / "killed"
    config, _ = load_config(presets=["quickstart-edit"], overrides=[f"output.dir={ref}", *EDIT_RESUME])
    assert_finished(run_training(config), config)
    with held_trainer(killed, "step@5", *EDIT_RESUME, preset="quickstart-edit") as proc:
        proc.kill()
        proc.wait()
    assert [p.name for p in runs.list_checkpoints(killed)] == ["checkpoint-2", "checkpoint-4"]
    args = sets(f"output.dir={killed}", *EDIT_RESUME)
    cli("train", "--preset", "quickstart-edit", *args, "--resume", "latest", check=True)
    a, b = load_file(str(ref / runs.LORA_FILE)), load_file(str(killed / runs.LORA_FILE))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


def test_an_edit_runs_first_steps_are_pinned(tmp_path: Path) -> None:
    """quickstart-edit's pairs, σ, noise and reference tokens at steps 1, 2 and 7 for seed 42: what a
    resumed edit run must replay (the resume contract)."""
    from flux2_lora.training.trainer import Trainer

    config, _ = load_config(
        presets=["quickstart-edit"],
        overrides=[f"output.dir={tmp_path}/run", "validation.enabled=false", "logging.tensorboard=false"],
    )
    t = Trainer(config)
    t.setup()
    assert t.schedule is not None
    for step, (pairs, sigmas, noise, ref_sum, ref_shape) in PINNED.items():
        assert t.schedule.micro_batch(step, 0, 0, 1, 1) == pairs
        batch = t.micro_batch(step, 0)
        assert batch["sigmas"].tolist() == pytest.approx(sigmas, abs=1e-3)
        assert batch["noise"].flatten()[:3].tolist() == pytest.approx(noise, abs=1e-5)
        assert float(batch["reference_latents"].double().sum()) == pytest.approx(ref_sum, abs=1e-2)
        assert tuple(batch["reference_ids"].shape) == ref_shape  # step 2: a batch of two-reference pairs


# Pairs (item, sample id), σ, the first noise values, the reference tokens' sum and their ids' shape.
PINNED: dict[int, Any] = {
    1: ([(10, 0), (11, 1)], [0.092, 0.269], [-0.24103, -0.04829, -0.2381], -87.147, (2, 16, 4)),
    2: ([(6, 2), (3, 3)], [0.89, 0.596], [0.59754, -0.42241, 0.09304], -228.033, (2, 32, 4)),
    7: ([(2, 12), (1, 13)], [0.023, 0.617], [-0.16564, -0.15597, 0.33736], -93.352, (2, 16, 4)),
}


def test_a_missing_validation_reference_is_named(tmp_path: Path) -> None:
    from flux2_lora.data.scan import DatasetError
    from flux2_lora.training.sampling import reference_images

    good = _noise_image(tmp_path / "ok.png", (100, 70), 0)
    [im] = reference_images([good])
    assert im.size == (96, 64)  # the size it trains at: sides floored to multiples of 16
    with pytest.raises(DatasetError, match=r"validation.references: .*gone.png"):
        reference_images([good, tmp_path / "gone.png"])
