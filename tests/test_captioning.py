"""``flux2-lora caption``: which images get a caption, the three modes, resuming, refusals, and a run
with a tiny randomly initialised Qwen2.5-VL built from config (files and modes, not caption quality)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from flux2_lora import captioning as cap
from flux2_lora.cli import main
from tests.helpers import cli

_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2-VL's chat template, reduced to text and image parts (no video, no tools).
_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}{%- else %}"
    "{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_tiny_vl_model(folder: Path) -> Path:
    """A Qwen2.5-VL at toy size (hidden 32, 2 layers, vision depth 1), random weights (seeded), a
    byte-level BPE tokenizer trained here with Qwen's special tokens (as the demo's tokenizer is
    built), and Qwen-VL's image processor config: a model folder as from_pretrained expects one."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2Tokenizer,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(
        ["a photo of a red square", "describe this image", "user", "assistant"] * 20, trainer
    )
    none: Any = None
    tokenizer: Any = Qwen2Tokenizer(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=none,
        bos_token=none,
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    ids: dict[str, int] = {t: tokenizer.convert_tokens_to_ids(t) for t in _SPECIAL}
    special: dict[str, Any] = {
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "bos_token_id": None,
    }
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            # head_dim 8: the M-RoPE sections (temporal, height, width) must sum to head_dim / 2.
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
            "max_position_embeddings": 4096,
            **special,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 32,
            "fullatt_block_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        **special,
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config)
    # Random weights could end a caption at once; special tokens are never generated, so every
    # caption has max_new_tokens ordinary tokens and the test asserts files, not luck.
    model.generation_config = GenerationConfig(**special, suppress_tokens=list(ids.values()))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112}).save_pretrained(
        folder
    )
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vl_model(tmp_path_factory.mktemp("tiny-qwen-vl"))


def _image(path: Path, size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _all_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    _image(root / "a.png")
    _image(root / "sub" / "b.jpg", color=(20, 200, 20))
    _image(root / "c.png", color=(20, 20, 200))
    (root / "c.txt").write_text("my own caption\n")
    return root


# --- the plan and the writes (no model) ----------------------------------------------------------


def test_plan_keeps_captions_and_refuses_hostile_files(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    outside = tmp_path / "outside"
    _image(root / "a.png")
    _image(root / "b.png")
    (root / "b.TXT").write_text("upper-case extension, as training pairs it")
    _image(root / "c.png")
    (outside / "secret.txt").parent.mkdir(parents=True)
    (outside / "secret.txt").write_text("not the dataset's")
    os.symlink(outside / "secret.txt", root / "c.txt")
    _image(root / "d.jpg")
    _image(root / "d.png")  # both would be described by d.txt
    (root / "e.png").write_bytes(b"not an image")
    os.symlink(_image(outside / "x.png"), root / "link.png")
    _image(root / ".hidden.png")

    keep = cap.plan_captions(root, mode="keep")
    assert [(i.name, t.name) for i, t in keep.todo] == [("a.png", "a.txt"), ("d.jpg", "d.txt")]
    assert keep.kept == ["b.png"]
    problems = "\n".join(keep.problems)
    assert "c.txt: caption file is a symbolic link; not replaced" in problems
    assert "d.png: shares the caption file d.txt with d.jpg" in problems
    assert "e.png: not an image" in problems
    assert "link.png: is a symbolic link that leads outside the dataset folder" in problems
    assert ".hidden" not in problems and all("\n" not in p for p in keep.problems)

    overwrite = cap.plan_captions(root, mode="overwrite")
    # The existing caption is replaced under its own name, so training keeps pairing it.
    assert [(i.name, t.name) for i, t in overwrite.todo] == [
        ("a.png", "a.txt"),
        ("b.png", "b.TXT"),
        ("d.jpg", "d.txt"),
    ]
    assert overwrite.kept == []


def test_an_unreadable_caption_is_kept_and_only_overwrite_replaces_it(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _image(root / "a.png")
    (root / "a.txt").write_bytes(b"\xff\xfeU\x00T\x00F\x00")  # UTF-16: training refuses to read it
    assert cap.plan_captions(root, mode="keep").kept == ["a.png"]
    assert [i.name for i, _ in cap.plan_captions(root, mode="overwrite").todo] == ["a.png"]


def test_write_caption_is_atomic_and_keeps_a_file_that_appeared(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    cap.write_caption(target, "first", replace=False)
    assert target.read_text() == "first\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600
    with pytest.raises(FileExistsError):
        cap.write_caption(target, "second", replace=False)
    assert target.read_text() == "first\n"
    cap.write_caption(target, "third", replace=True)
    assert target.read_text() == "third\n"
    assert _all_files(tmp_path) == {"a.txt"}  # no temporary file left behind


def test_finish_caption_is_one_clean_line_with_the_trigger_once() -> None:
    assert cap.finish_caption("  A red\nsquare\x1b[31m on\tgrey. \x00") == "A red square[31m on grey."
    assert cap.finish_caption("a red square", trigger="sks") == "sks, a red square"
    assert cap.finish_caption("sks, a red square", trigger="sks") == "sks, a red square"
    assert cap.finish_caption("a photo of sks dog", trigger="sks") == "a photo of sks dog"
    assert cap.finish_caption(" \n ", trigger="sks") == ""  # nothing to prefix: reported as empty


def _fake_model(answers: list[str]) -> Any:
    calls: list[tuple[int, int]] = []

    def caption(image: Image.Image) -> str:
        calls.append(image.size)
        return answers[(len(calls) - 1) % len(answers)]

    caption.calls = calls  # type: ignore[attr-defined]
    return caption


def test_modes_keep_overwrite_prefix(dataset: Path) -> None:
    lines: list[str] = []
    keep = cap.caption_plan(
        cap.plan_captions(dataset), _fake_model(["a red\nsquare"]), mode="keep", report=lines.append
    )
    assert keep.written == ["a.txt", "sub/b.txt"] and not keep.failed and not lines
    assert (dataset / "a.txt").read_text() == "a red square\n"
    assert (dataset / "c.txt").read_text() == "my own caption\n"  # keep: not ours to replace

    again = cap.plan_captions(dataset)
    assert again.todo == [] and again.kept == ["a.png", "c.png", "sub/b.jpg"]

    overwrite = cap.caption_plan(
        cap.plan_captions(dataset, mode="overwrite"), _fake_model(["new words"]), mode="overwrite"
    )
    assert overwrite.written == ["a.txt", "c.txt", "sub/b.txt"]
    assert {(dataset / n).read_text() for n in overwrite.written} == {"new words\n"}

    _image(dataset / "d.png")
    prefix_plan = cap.plan_captions(dataset, mode="prefix")
    assert [i.name for i, _ in prefix_plan.todo] == ["d.png"]
    cap.caption_plan(prefix_plan, _fake_model(["a blue square"]), mode="prefix", trigger="sks")
    assert (dataset / "d.txt").read_text() == "sks, a blue square\n"
    assert (dataset / "a.txt").read_text() == "new words\n"  # prefix does not touch existing captions
    # Run again: nothing left to caption, the trigger stays once.
    assert cap.plan_captions(dataset, mode="prefix").todo == []
    assert (dataset / "d.txt").read_text().count("sks") == 1


def test_an_interrupted_run_resumes_where_it_stopped(dataset: Path) -> None:
    (dataset / "c.txt").unlink()
    plan = cap.plan_captions(dataset)
    assert [i.name for i, _ in plan.todo] == ["a.png", "c.png", "b.jpg"]
    calls = 0

    def interrupted(image: Image.Image) -> str:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt  # Ctrl-C while the model works on the second image
        return "first caption"

    with pytest.raises(KeyboardInterrupt):
        cap.caption_plan(plan, interrupted, mode="keep")
    assert _all_files(dataset) == {"a.png", "a.txt", "c.png", "sub/b.jpg"}  # no half-written file
    resumed = cap.plan_captions(dataset)
    assert [i.name for i, _ in resumed.todo] == ["c.png", "b.jpg"] and resumed.kept == ["a.png"]
    model = _fake_model(["rest"])
    cap.caption_plan(resumed, model, mode="keep")
    assert len(model.calls) == 2
    assert (dataset / "a.txt").read_text() == "first caption\n"
    assert (dataset / "c.txt").read_text() == (dataset / "sub" / "b.txt").read_text() == "rest\n"


def test_failures_are_one_line_naming_the_file(dataset: Path) -> None:
    plan = cap.plan_captions(dataset, mode="overwrite")
    (dataset / "a.png").write_bytes(b"gone bad after the scan")
    lines: list[str] = []

    def broken(image: Image.Image) -> str:
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")

    outcome = cap.caption_plan(plan, broken, mode="overwrite", report=lines.append)
    assert lines[0].startswith("error: a.png: cannot load the image")
    assert lines[1] == "error: c.png: the model failed (RuntimeError: CUDA out of memory.)"
    assert lines[2].startswith("error: sub/b.jpg: the model failed")
    assert all("\n" not in line for line in lines) and outcome.written == []
    assert (dataset / "c.txt").read_text() == "my own caption\n"

    many = cap.Plan(root=dataset, todo=[(dataset / "c.png", dataset / "c.txt")] * 5)
    stopped = cap.caption_plan(many, broken, mode="overwrite", report=lambda _: None)
    assert len(stopped.failed) == 3 and "3 images in a row" in stopped.stopped


def test_an_empty_answer_writes_nothing(dataset: Path) -> None:
    outcome = cap.caption_plan(cap.plan_captions(dataset), _fake_model(["  \n"]), mode="keep", report=print)
    assert outcome.failed == [
        "a.png: the model answered an empty caption; nothing written",
        "sub/b.jpg: the model answered an empty caption; nothing written",
    ]
    assert not (dataset / "a.txt").exists()


# --- the command's refusals (no model loaded) ----------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mode", "prefix"], "error: --trigger: required by --mode prefix"),
        (["--trigger", "sks"], "error: --trigger: --mode keep writes the model's captions as they are"),
        (["--prompt", "  "], "error: --prompt: must not be empty"),
        (["--max-new-tokens", "0"], "error: --max-new-tokens: must be between 1 and 2048"),
        (["--caption-extension", "txt"], "error: --caption-extension: "),
        (["--model", "/nonexistent/model"], "error: --model /nonexistent/model: the folder does not exist"),
    ],
)
def test_refusals_are_one_line(
    dataset: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["caption", str(dataset), *argv])
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err
    assert _all_files(dataset) == {"a.png", "c.png", "c.txt", "sub/b.jpg"}


def test_a_folder_that_is_not_a_model_is_named(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty-model").mkdir()
    assert main(["caption", str(dataset), "--model", str(tmp_path / "empty-model")]) == 1
    assert "the folder has no config.json; not a transformers model" in capsys.readouterr().err


def test_missing_dataset_and_nothing_to_do(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["caption", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    for name in ("a", "sub/b"):
        (dataset / f"{name}.txt").write_text("done")
    assert main(["caption", str(dataset), "--model", "/nonexistent"]) == 0  # nothing loaded
    out = capsys.readouterr().out
    assert "3 images, 0 to caption, 3 kept" in out and "nothing to caption" in out


# --- with the tiny model ----------------------------------------------------------------------------


@pytest.mark.slow
def test_fallback_inputs_match_qwen2vl_processor(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torchvision the processor is rebuilt from tokenizer + PIL image processor; its inputs
    must be exactly those of Qwen2VLProcessor (built here with its video-processor check skipped)."""
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    image_processor = AutoImageProcessor.from_pretrained(tiny_model)
    ours = cap.VisionPrompt(None, tokenizer, image_processor, max_pixels=cap.DEFAULT_MAX_PIXELS)
    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda *a: None)
    theirs = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=None)
    image = Image.new("RGB", (200, 150), (10, 120, 240))
    text = ours.text("describe this image")
    assert text.count("<|image_pad|>") == 1
    expected = theirs(images=[image], text=[text], return_tensors="pt")
    got = ours(image, "describe this image")
    assert set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert int(got["mm_token_type_ids"].sum()) == int(got["image_grid_thw"].prod()) // 4


@pytest.mark.slow
def test_memory_estimate_counts_the_models_parameters(tiny_model: Path) -> None:
    from transformers import AutoModelForImageTextToText

    estimate = cap.estimate_memory(str(tiny_model), dtype="bfloat16", device="cpu")
    model = AutoModelForImageTextToText.from_pretrained(tiny_model)
    assert estimate.parameters == sum(p.numel() for p in model.parameters())
    assert estimate.weights_bytes == 2 * estimate.parameters
    assert estimate.line(str(tiny_model)).startswith(f"memory: {tiny_model} has 0.")


@pytest.mark.slow
def test_caption_command_with_a_tiny_qwen_vl(
    tiny_model: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["caption", str(dataset), "--model", str(tiny_model), "--device", "cpu", "--max-new-tokens", "6"]
    assert main([*base, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 images, 2 to caption, 1 kept" in out and "memory: " in out and "would caption sub/b.jpg" in out
    assert _all_files(dataset) == {"a.png", "c.png", "c.txt", "sub/b.jpg"}  # a dry run writes nothing

    assert main(base) == 0
    captured = capsys.readouterr()
    assert "float32" in captured.out and "captions written: 2, failed: 0" in captured.out
    assert "2/2" in captured.err  # the progress bar reached the end
    assert _all_files(dataset) == {"a.png", "a.txt", "c.png", "c.txt", "sub/b.jpg", "sub/b.txt"}
    first = (dataset / "a.txt").read_text()
    assert first.strip() and first.count("\n") == 1
    assert (dataset / "c.txt").read_text() == "my own caption\n"

    assert main(base) == 0  # keep again: all captioned, nothing loaded
    assert "nothing to caption" in capsys.readouterr().out

    assert main([*base, "--mode", "overwrite"]) == 0
    assert "captions written: 3" in capsys.readouterr().out
    assert (dataset / "c.txt").read_text() != "my own caption\n"

    _image(dataset / "d.png", size=(300, 80))
    assert main([*base, "--mode", "prefix", "--trigger", "sks"]) == 0
    assert "captions written: 1" in capsys.readouterr().out
    assert (dataset / "d.txt").read_text().startswith("sks, ")
    assert main([*base, "--mode", "prefix", "--trigger", "sks"]) == 0
    assert (dataset / "d.txt").read_text().count("sks") == 1


@pytest.mark.slow
def test_an_unknown_model_offline_is_one_line(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    proc = cli("caption", str(dataset), "--model", "no-such-org/no-such-model", "--device", "cpu")
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines == [
        "error: --model no-such-org/no-such-model: not in the local Hugging Face cache and HF_HUB_OFFLINE "
        "is set; download it once online or give a local folder"
    ]
    assert "Traceback" not in proc.stderr
