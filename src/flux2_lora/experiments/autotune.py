"""A complete training config proposed from the dataset itself, each value with its reason, then fitted to
the GPU by the memory model (no torch: :func:`flux2_lora.data.scan.scan_dataset` and
:mod:`flux2_lora.memory`).

What is read: image count, sizes, aspect spread, caption lengths and whether one trigger word runs
through the captions. What is proposed: the LoRA kind (character / style / concept, from the
captions' words), rank, steps scaled with the image count, learning rate, a resolution no larger than
the typical image, bucketing when aspects vary, repeats, the trigger word, and sample/checkpoint
cadence. The rules are the presets' folklore made explicit; every one is stated in its reason.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from flux2_lora.config import TrainConfig
from flux2_lora.config.io import compose, deep_merge, diff_from_defaults, to_dict, validate_dict
from flux2_lora.data.scan import scan_dataset
from flux2_lora.experiments.datastats import DatasetStats, dataset_stats
from flux2_lora.variants import LIGHTEST_REAL_VARIANT, REAL_VARIANTS

Kind = Literal["character", "style", "concept"]
VARIANT_PRESETS = {v: v for v in REAL_VARIANTS}  # each real variant's shipped preset has its name
DEFAULT_VARIANT = LIGHTEST_REAL_VARIANT
# Optimizer steps per image for a full run, by kind (the presets' totals over their typical 15–25 images).
STEPS_PER_IMAGE = {"character": 100, "concept": 80, "style": 50}
MIN_STEPS, MAX_STEPS = 500, 3000
SMALL_DATASET = 10  # below this, a smaller adapter memorises less
RESOLUTIONS = (512, 768, 1024)
UPSCALE_TOLERANCE = 0.05
BUCKET_SHARE = 0.2  # bucketing pays off when at least this share of images is not square


@dataclass
class Choice:
    field: str  # dotted config path, or "" for a note about the whole proposal
    value: Any
    reason: str
    source: str = "dataset"  # dataset | gpu fit


@dataclass
class Proposal:
    kind: Kind
    stats: DatasetStats
    config: TrainConfig
    choices: list[Choice]
    fit: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dataset": self.stats.to_dict(),
            "choices": [asdict(c) for c in self.choices],
            "fit": self.fit,
            "config": to_dict(self.config),
            "changes": diff_from_defaults(self.config),
        }

    def overrides(self) -> dict[str, Any]:
        """{field: value} of every choice (what the UI applies to its form)."""
        return {c.field: c.value for c in self.choices if c.field}


def choose_kind(stats: DatasetStats, kind: str | None) -> tuple[Kind, str]:
    if kind:
        return kind, f"{kind}, as asked"  # type: ignore[return-value]
    if not stats.captioned:
        return "concept", "no captions to tell from: concept, between character and style (or pass --kind)"
    best = max(stats.kind_scores, key=lambda k: stats.kind_scores[k])
    share = stats.kind_scores[best]
    if share >= 0.3:
        words = ", ".join(stats.kind_words.get(best, []))
        return best, f"{share:.0%} of the captions use {best} words ({words})"  # type: ignore[return-value]
    return "concept", "the captions name neither a person nor a style: an object or concept"


def _round100(v: float) -> int:
    return int(max(100, round(v / 100) * 100))


def _resolution(typical: int, demo: bool) -> tuple[int, str]:
    if demo:  # the demo model is tiny; its images are 128 px
        res = max(32, min(128, typical // 16 * 16))
        return res, f"the demo model trains at small sizes; typical image side {typical} px"
    # Within UPSCALE_TOLERANCE of the images' own size counts as their size (1010 px images train at 1024).
    fitting = [r for r in RESOLUTIONS if r <= typical * (1 + UPSCALE_TOLERANCE)]
    if fitting:
        res = fitting[-1]
        more = (
            " (FLUX.2 is trained around 1024; larger costs memory and time for little gain)"
            if typical > 1024
            else ""
        )
        return (
            res,
            f"typical image side {typical} px: {res}, not above the images' own size (within 5%){more}",
        )
    res = typical // 64 * 64 if typical >= 256 else max(16, typical // 16 * 16)
    return res, (
        f"typical image side {typical} px is below 512: {res}, so images are not upscaled (larger originals "
        "would let the LoRA learn more detail)"
    )


def propose(
    root: str | Path,
    *,
    dataset_path: str | None = None,
    variant: str | None = None,
    gpu: str | None = None,
    kind: str | None = None,
    base: dict[str, Any] | None = None,
    caption_extension: str = ".txt",
    trigger_word: str = "",
) -> Proposal:
    """The proposal for the dataset under ``root`` (a scanned folder). ``base``: a config whose model,
    output and dataset.path are kept (the UI's form); else ``variant`` picks the model preset. ValueError
    with a message naming the field for an unusable dataset or an unknown variant or GPU."""
    report = scan_dataset(Path(root), caption_extension=caption_extension)
    stats = dataset_stats(report, trigger_word)
    k, kind_reason = choose_kind(stats, kind)
    choices: list[Choice] = [Choice("", k, f"{k} LoRA: {kind_reason}")]
    data, model_choice = _model_base(variant, base)
    if model_choice:
        choices.append(model_choice)
    demo = str((data.get("model") or {}).get("path", "")).strip().lower() == "demo"
    preset, _ = compose([k])
    n = stats.num_images

    def choose(path: str, value: Any, reason: str) -> None:
        section, _, key = path.partition(".")
        data.setdefault(section, {})[key] = value
        choices.append(Choice(path, value, reason))

    rank = int(preset["lora"]["rank"])
    if n < SMALL_DATASET and rank > 16:
        choose(
            "lora.rank",
            16,
            f"{n} images: rank 16 rather than the {k} preset's {rank}, a smaller adapter memorises less",
        )
    else:
        choose("lora.rank", rank, f"the {k} preset's rank for {n} images")
    choose("lora.alpha", float(data["lora"]["rank"]), "alpha = rank: updates at scale 1 (alpha/rank)")
    raw = STEPS_PER_IMAGE[k] * n
    steps = min(MAX_STEPS, max(MIN_STEPS, _round100(raw)))
    capped = (
        " (capped: past that a LoRA mostly overfits; raise it by hand for a large dataset)"
        if raw > MAX_STEPS
        else ""
    )
    floor = f" (at least {MIN_STEPS})" if raw < MIN_STEPS else ""
    choose(
        "training.max_steps", steps, f"{n} images × ~{STEPS_PER_IMAGE[k]} steps each for a {k}{capped}{floor}"
    )
    if demo:
        choose(
            "training.learning_rate",
            0.005,
            "the demo's random-weight model needs a large step (quickstart's rate)",
        )
    else:
        lr = float(preset["training"]["learning_rate"])
        choose("training.learning_rate", lr, f"the {k} preset's rate for AdamW at alpha = rank")
    bucketing = stats.not_square >= BUCKET_SHARE * n
    typical = stats.area_side_median if bucketing else stats.short_side_median
    res, res_reason = _resolution(typical, demo)
    choose("dataset.resolution", res, res_reason)
    if bucketing:
        choose(
            "dataset.bucketing",
            True,
            f"{stats.not_square} of {n} images are not square (aspect {stats.aspect_min:.2f}–{stats.aspect_max:.2f}): "
            "buckets train whole pictures instead of square crops",
        )
    else:
        choose(
            "dataset.bucketing",
            False,
            f"{n - stats.not_square} of {n} images are square (±10%): square crops lose little",
        )
    sub = (
        f"; the subfolders {', '.join(stats.subfolder_repeats)} keep their own repeats"
        if stats.subfolder_repeats
        else ""
    )
    choose(
        "dataset.repeats",
        1,
        f"max_steps sets the training length; repeats only weight images against each other{sub}",
    )
    _captions(stats, k, choose)
    every = max(50, _round100(steps / 4))
    choose("validation.every_n_steps", every, f"about 4 sample rounds over {steps} steps")
    choose("output.checkpoint_every", every, f"about 4 checkpoints over {steps} steps")
    if not (base and (base.get("output") or {}).get("dir")):
        name = (
            re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(dataset_path or stats.root).stem).strip("-.") or "autotune"
        )
        choose("output.dir", f"runs/{name}", "named after the dataset")
    data.setdefault("dataset", {})["path"] = dataset_path or stats.root
    data["dataset"]["caption_extension"] = caption_extension
    config, issues = validate_dict(data)
    if config is None:
        raise ValueError("; ".join(str(i) for i in issues if i.level == "error"))
    config, fit = _fit(config, gpu, choices)
    return Proposal(k, stats, config, choices, fit)


def _model_base(variant: str | None, base: dict[str, Any] | None) -> tuple[dict[str, Any], Choice | None]:
    """The config the proposal starts from: the form's model (and output, logging) or a model preset."""
    if base:
        kept = {
            s: dict(base[s])
            for s in ("model", "output", "logging", "memory", "performance")
            if isinstance(base.get(s), dict)
        }
        return deep_merge(to_dict(TrainConfig()), kept), None
    v = (variant or DEFAULT_VARIANT).strip().lower()
    if v == "demo":
        data, _ = compose(["quickstart"])
        return deep_merge(to_dict(TrainConfig()), {"model": data["model"]}), Choice(
            "model.path", "demo", "the embedded demo model (--variant demo)"
        )
    if v not in VARIANT_PRESETS:
        raise ValueError(f"--variant: unknown variant {variant!r} ({', '.join(REAL_VARIANTS)} or demo)")
    data, _ = compose([VARIANT_PRESETS[v]])
    why = f"--variant {v}" if variant else "the lightest real FLUX.2 model (choose another with --variant)"
    return deep_merge(to_dict(TrainConfig()), data), Choice("model.path", data["model"]["path"], why)


def _captions(stats: DatasetStats, kind: Kind, choose: Any) -> None:
    n = stats.num_images
    if not stats.captioned:
        caption = {
            "character": "a photo of sks person",
            "style": "an image in sks style",
            "concept": "a photo of sks",
        }[kind]
        choose(
            "dataset.default_caption",
            caption,
            "no caption files: every image trains on this caption (write captions for more control)",
        )
        choose("dataset.trigger_word", "sks", "the trigger in the default caption")
    elif stats.trigger:
        missing = stats.captioned - stats.trigger_count
        if missing:
            why = f"'{stats.trigger}' is in {stats.trigger_count} of {stats.captioned} captions: as the trigger word it is added to the other {missing}"
        else:
            why = f"'{stats.trigger}' is in every caption: the word that calls the LoRA"
        choose("dataset.trigger_word", stats.trigger, why)
    else:
        choose(
            "dataset.trigger_word",
            "",
            f"no word runs through most of the {stats.captioned} captions; add a trigger (e.g. sks) to each caption, or set one here to prefix it",
        )
    if stats.captioned and stats.captioned < n:
        choose(
            "dataset.default_caption",
            stats.trigger or "",
            f"{n - stats.captioned} of {n} images have no caption file: they train on the trigger alone",
        )
    if kind == "style" and stats.captioned:
        choose(
            "dataset.caption_dropout",
            0.05,
            "a style LoRA: 5% of steps without a caption, so the style also shows unprompted",
        )


def _fit(config: TrainConfig, gpu: str | None, choices: list[Choice]) -> tuple[TrainConfig, dict[str, Any]]:
    """The config fitted to the GPU with the memory model's cheapest changes, each recorded as a choice."""
    from flux2_lora.assess import assess
    from flux2_lora.config.io import to_dict as dump
    from flux2_lora.memory import auto_fit, find_gpu, local_gpu
    from flux2_lora.memory.recommend import moves

    card = find_gpu(gpu) if gpu else local_gpu()
    if gpu and card is None:
        raise ValueError(f"--gpu: unknown GPU {gpu!r}; give a class like 24, 48, 80 or a size in GiB")
    if card is None:
        return config, {"gpu": None, "note": "no GPU given or found: not fitted (pass --gpu, e.g. --gpu 24)"}
    before = assess(config, gpu=card, recommendations=False)
    if before.report is None:
        return config, {"gpu": card.name, "note": before.message}
    before_gib = float(before.report["total_gib"])
    fitted = auto_fit(config, card.gib)
    if fitted is None:
        return config, {
            "gpu": card.name,
            "gib": card.gib,
            "total_gib": before_gib,
            "verdict": before.report["gpu"]["verdict"],
            "note": "nothing the memory model knows makes this fit; use a larger GPU or a smaller model",
        }
    titles = {k: mv.title for mv in moves(config) for k, _ in mv.overrides}
    old, new = _flat(dump(config)), _flat(dump(fitted))
    for path, value in new.items():
        if old.get(path) != value:
            choices.append(
                Choice(path, value, f"to fit {card.name}: {titles.get(path, 'memory')}", "gpu fit")
            )
    after = assess(fitted, gpu=card, recommendations=False).report or before.report
    after_gib = float(after["total_gib"])
    return fitted, {
        "gpu": card.name,
        "gib": card.gib,
        "total_gib_before": before_gib,
        "total_gib": after_gib,
        "verdict": after["gpu"]["verdict"],
        "note": f"{after_gib:.1f} GiB of {card.gib:.1f} GiB"
        + (f" (was {before_gib:.1f} GiB before fitting)" if fitted is not config else ""),
    }


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, sec in d.items() for k, v in sec.items()}


def format_proposal(p: Proposal) -> str:
    s = p.stats
    lines = [
        f"Dataset: {s.root}",
        f"  {s.num_images} images, median {s.width_median}×{s.height_median} (short side {s.short_side_min}–{s.short_side_max}), "
        f"{s.not_square} not square (aspect {s.aspect_min:.2f}–{s.aspect_max:.2f})",
        f"  captions: {s.captioned}/{s.num_images}, {s.caption_words_median:g} words median ({s.caption_words_min}–{s.caption_words_max})"
        + (f"; trigger '{s.trigger}' in {s.trigger_count}" if s.trigger else "; no common trigger word"),
        "Proposal:",
    ]
    for c in p.choices:
        name = c.field or "kind"
        lines.append(f"  {name:26} {_shown(c.value):>12}  {c.reason}")
    fit = p.fit
    lines.append(
        f"GPU: {fit.get('gpu') or '-'}: {fit.get('verdict', '').replace('_', ' ')} {fit.get('note', '')}".rstrip()
    )
    return "\n".join(lines)


def _shown(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    text = str(v)
    return text if len(text) <= 40 else text[:39] + "…"
