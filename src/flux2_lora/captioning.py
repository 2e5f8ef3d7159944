"""Captioning a dataset folder with a vision-language model (a Qwen-VL family model by default).

The plan (which images get a caption, which are kept, which are refused) needs no torch; the model is
loaded through transformers' Auto classes (torch and transformers are imported inside functions). Every
problem is one line naming the file; a caption file is written atomically beside its image, inside the
dataset folder, and one that exists is replaced only in overwrite mode.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The plan and the writing of caption files need no torch; they live in data/ for the web UI's previews
# (re-exported: the CLI and tests know them here).
from flux2_lora.data.caption_files import MODES as MODES
from flux2_lora.data.caption_files import Mode, Plan, rel_name, write_caption
from flux2_lora.data.caption_files import plan_captions as plan_captions
from flux2_lora.display import escape
from flux2_lora.units import GIB

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
DEFAULT_PROMPT = (
    "Write one caption for this image, as for training an image generator: a single detailed sentence "
    "naming the subject, setting, style, colours and lighting. Reply with the caption only."
)
DEFAULT_MAX_PIXELS = 1024 * 1024  # the image the model sees; Qwen-VL's own default (12.8 MP) is slow
_MAX_MODEL_FAILURES_IN_A_ROW = 3  # the same model error on every image: stop instead of repeating it
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class CaptionError(Exception):
    """A problem that stops captioning; the message is one line for the user."""


def finish_caption(text: str, *, trigger: str = "") -> str:
    """The model's answer as a caption: one line, spaces collapsed, the trigger prefixed once (the
    training rule: a caption that already has it is left as it is)."""
    from flux2_lora.data.captions import apply_trigger

    # Control characters (a terminal escape, a NUL) have no place in a caption; line breaks become spaces.
    spaced = (" " if ch.isspace() else ch for ch in text)
    text = "".join(ch for ch in spaced if unicodedata.category(ch) not in ("Cc", "Cs"))
    caption = re.sub(r" +", " ", text).strip()
    return apply_trigger(caption, trigger) if caption and trigger.strip() else caption


# --- the model --------------------------------------------------------------------------------------


def _is_local(model: str) -> bool:
    return os.path.isabs(model) or model.startswith((".", "~")) or os.path.exists(model)


def _model_error(model: str, error: BaseException) -> CaptionError:
    """A failed load as one line: a local folder's problem, or a Hub id that cannot be reached."""
    shown = escape(model)
    if _is_local(model):
        path = Path(model).expanduser()
        if not path.exists():
            return CaptionError(f"--model {shown}: the folder does not exist")
        if not path.is_dir():
            return CaptionError(f"--model {shown}: not a folder (give a model folder or a Hub id)")
        if not (path / "config.json").is_file():
            return CaptionError(f"--model {shown}: the folder has no config.json; not a transformers model")
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return CaptionError(
            f"--model {shown}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            "download it once online or give a local folder"
        )
    if _is_local(model):
        return CaptionError(f"--model {shown}: cannot be loaded ({escape(first)})")
    return CaptionError(
        f"--model {shown}: cannot be loaded from the Hugging Face Hub (unknown id, gated, or no network): "
        f"{escape(first)}"
    )


def _quiet() -> None:
    import logging

    from flux2_lora.training.quiet import quiet_libraries

    quiet_libraries()
    # The Hub client logs each retry of an unreachable host; the failure itself is said in one line.
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def resolve_device_dtype(device: str, dtype: str) -> tuple[str, str]:
    """``auto`` → CUDA when there is one (bfloat16 where supported), else the CPU in float32."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CaptionError("--device cuda: no CUDA GPU is visible to torch")
    if dtype == "auto":
        if device.startswith("cuda"):
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "float32"  # CPUs run half precision slowly, some not at all
    return device, dtype


@dataclass
class MemoryEstimate:
    parameters: int
    dtype: str
    weights_bytes: int
    device: str

    def line(self, model: str) -> str:
        b = self.weights_bytes
        size = f"{b / GIB:.2f} GiB" if b >= GIB / 10 else f"{b / 2**20:.2f} MiB"
        count = (
            f"{self.parameters / 1e9:.2f} B" if self.parameters >= 1e8 else f"{self.parameters / 1e6:.2f} M"
        )
        return (
            f"memory: {escape(model)} has {count} parameters × "
            f"{_DTYPE_BYTES[self.dtype]} bytes ({self.dtype}) = {size} of weights "
            f"on {self.device}, plus activations for one image"
        )


def estimate_memory(model: str, *, dtype: str, device: str) -> MemoryEstimate:
    """The captioning model's weight memory from its config alone: the model is built on the meta
    device (no weights read or allocated) to count its parameters exactly, tied ones once."""
    if _is_local(model) and not (Path(model).expanduser() / "config.json").is_file():
        raise _model_error(model, FileNotFoundError(model))  # said without importing transformers
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    _quiet()
    try:
        config = AutoConfig.from_pretrained(model)
    except Exception as e:  # OSError, ValueError, JSON errors...: all mean "this is not a usable model"
        raise _model_error(model, e) from None
    try:
        with torch.device("meta"):
            skeleton = AutoModelForImageTextToText.from_config(config)
    except ValueError as e:
        kind = getattr(config, "model_type", "unknown")
        raise CaptionError(
            f"--model {escape(model)}: a {escape(str(kind))} model, not an image-to-text model transformers "
            f"can caption with ({escape(str(e).splitlines()[0])})"
        ) from None
    count = sum(p.numel() for p in skeleton.parameters())  # parameters() lists tied weights once
    return MemoryEstimate(count, dtype, count * _DTYPE_BYTES[dtype], device)


def available_bytes(device: str) -> int | None:
    """Free memory where the model will live (GPU memory, or the host's available RAM)."""
    try:
        if device.startswith("cuda"):
            import torch

            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # an unknown amount is not a reason to stop
        return None


class VisionPrompt:
    """Turns (image, instruction) into the model's inputs: with the model's own processor, or, where
    that cannot be loaded for lack of torchvision, the tokenizer and the PIL image processor."""

    def __init__(self, processor: Any, tokenizer: Any, image_processor: Any, *, max_pixels: int) -> None:
        self.processor, self.tokenizer, self.image_processor = processor, tokenizer, image_processor
        self.max_pixels = max_pixels

    @classmethod
    def load(cls, model: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> VisionPrompt:
        from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

        processor: Any = None
        try:
            processor = AutoProcessor.from_pretrained(model)
        except ImportError as e:
            # transformers 5's Qwen2-VL processor requires a video processor, which needs torchvision;
            # a CPU install may lack it. Images need only the tokenizer and the PIL image processor,
            # with the image placeholder expanded as Qwen2VLProcessor does (see __call__).
            if "torchvision" not in str(e).lower():
                raise _model_error(model, e) from None
        except Exception as e:
            raise _model_error(model, e) from None
        try:
            if processor is not None:
                return cls(processor, processor.tokenizer, processor.image_processor, max_pixels=max_pixels)
            tokenizer = AutoTokenizer.from_pretrained(model)
            image_processor = AutoImageProcessor.from_pretrained(model)
        except Exception as e:
            raise _model_error(model, e) from None
        return cls(None, tokenizer, image_processor, max_pixels=max_pixels)

    def text(self, prompt: str) -> str:
        """The chat prompt with one image placeholder, by the model's chat template."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        for owner in (self.processor, self.tokenizer):
            if owner is not None and getattr(owner, "chat_template", None):
                return str(owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        # Qwen2-VL's own template for one image and a text (a model folder saved without a template).
        return (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            f"<|vision_start|><|image_pad|><|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n"
        )

    def __call__(self, image: Any, prompt: str) -> dict[str, Any]:
        import torch

        w, h = image.size
        if w * h > self.max_pixels:  # the image tokens (and time, memory) grow with the pixels shown
            scale = (self.max_pixels / (w * h)) ** 0.5
            image = image.resize((max(1, int(w * scale)), max(1, int(h * scale))), resample=3)  # bicubic
        text = self.text(prompt)
        if self.processor is not None:
            return dict(self.processor(images=[image], text=[text], return_tensors="pt"))
        # What Qwen2VLProcessor.__call__ does for one image: the placeholder repeated once per merged
        # patch (image_grid_thw.prod() // merge_size**2), then tokenized, image tokens marked.
        image_token = getattr(self.tokenizer, "image_token", None) or "<|image_pad|>"
        if text.count(image_token) != 1:
            raise CaptionError(f"the model's chat template does not place one {image_token} for the image")
        pixels = self.image_processor(images=[image], return_tensors="pt")
        merge = int(getattr(self.image_processor, "merge_size", 2))
        count = int(pixels["image_grid_thw"][0].prod()) // merge**2
        ids = self.tokenizer([text.replace(image_token, image_token * count)], return_tensors="pt")
        image_id = self.tokenizer.convert_tokens_to_ids(image_token)
        return {
            **dict(ids),
            # 1 marks image tokens, as ProcessorMixin.create_mm_token_type_ids does (the M-RoPE needs it).
            "mm_token_type_ids": (ids["input_ids"] == image_id).to(torch.int64),
            **dict(pixels),
        }


class Captioner:
    """A loaded vision-language model with its inputs; :meth:`caption` answers for one image."""

    def __init__(self, model: str, *, device: str, dtype: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        import torch
        from transformers import AutoModelForImageTextToText

        _quiet()
        self.device = device
        self.inputs = VisionPrompt.load(model, max_pixels=max_pixels)
        loader: Any = AutoModelForImageTextToText  # its stub types from_pretrained's first argument oddly
        try:
            self.model = loader.from_pretrained(model, dtype=getattr(torch, dtype))
        except Exception as e:
            raise _model_error(model, e) from None
        self.model.to(device).eval()

    def caption(self, image: Any, *, prompt: str, max_new_tokens: int) -> str:
        import torch

        inputs = {
            k: v.to(self.device) if hasattr(v, "to") else v for k, v in self.inputs(image, prompt).items()
        }
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]
        return str(self.inputs.tokenizer.batch_decode(new, skip_special_tokens=True)[0])


def load_image(path: Path) -> Any:
    """The image as an RGB PIL image, EXIF orientation applied, transparency on white (as training sees it)."""
    import warnings

    from PIL import Image, ImageOps

    from flux2_lora.training.images import to_rgb

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with Image.open(path) as raw:
            return to_rgb(ImageOps.exif_transpose(raw))


@dataclass
class Outcome:
    written: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "file: message"
    stopped: str = ""  # why the run stopped early, or ""


def caption_plan(
    plan: Plan,
    caption: Callable[[Any], str],
    *,
    mode: Mode,
    trigger: str = "",
    report: Callable[[str], None] = print,
    progress: Callable[[Iterable[tuple[Path, Path]]], Iterable[tuple[Path, Path]]] = lambda it: it,
) -> Outcome:
    """Caption each image of ``plan.todo`` with ``caption(pil_image) -> text`` and write it; a failure
    is reported as one line naming the file and the run goes on (it stops when the model fails on
    several images in a row: the same error would repeat for every image)."""
    outcome = Outcome()
    model_failures = 0
    for image, target in progress(plan.todo):
        rel = rel_name(plan.root, image)
        try:
            pil = load_image(image)
        except Exception as e:
            outcome.failed.append(f"{rel}: cannot load the image ({escape(str(e))})")
            report(f"error: {outcome.failed[-1]}")
            continue
        try:
            text = finish_caption(caption(pil), trigger=trigger)
        except Exception as e:
            model_failures += 1
            first = (str(e).splitlines() or [""])[0]
            outcome.failed.append(f"{rel}: the model failed ({type(e).__name__}: {escape(first)})")
            report(f"error: {outcome.failed[-1]}")
            if model_failures >= _MAX_MODEL_FAILURES_IN_A_ROW:
                outcome.stopped = f"the model failed on {model_failures} images in a row"
                break
            continue
        model_failures = 0
        if not text:
            outcome.failed.append(f"{rel}: the model answered an empty caption; nothing written")
            report(f"error: {outcome.failed[-1]}")
            continue
        try:
            write_caption(target, text, replace=mode == "overwrite")
        except OSError as e:
            outcome.failed.append(
                f"{rel_name(plan.root, target)}: not written ({escape(e.strerror or str(e))})"
            )
            report(f"error: {outcome.failed[-1]}")
            continue
        outcome.written.append(rel_name(plan.root, target))
    return outcome
