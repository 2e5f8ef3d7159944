"""Latents and text embeddings cached on disk (``memory.cache_to_disk``): ``<run>/.cache``.

Each tensor is one safetensors file named by the SHA-256 of what it was computed from: the image file's
bytes or the caption's text, and every setting that changes the result (model, variant, dtype, the
target size, the flip, the crop; the encoder's layers and quantization). ``manifest.json`` lists them
with those settings, for people and tools. A file that is missing or unreadable is encoded again; nothing
is ever unpickled, and file names come from hashes, never from the data. The sources here read the files
per step instead of holding every tensor in RAM, so a 5,000-image dataset needs neither its latents in
memory nor a second encoding when the run resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import torch

from flux2_lora.training.batches import LatentSource, PromptSource, derive_seed, encode_images

log = logging.getLogger("flux2_lora")
CACHE_DIR = ".cache"
MANIFEST = "manifest.json"
_VERSION = 1


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class DiskCache:
    """One run's cache folder: tensors by key, and the manifest of what they were computed from."""

    def __init__(self, root: Path, model: dict[str, Any]):
        self.root = root
        self.model = model  # the model's identity: path, variant, dtype, local files' stamp
        self.entries: dict[str, dict[str, Any]] = {}
        self.hits = self.misses = 0
        manifest = root / MANIFEST
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            if data.get("version") == _VERSION and isinstance(data.get("entries"), dict):
                self.entries = data["entries"]
        except (OSError, ValueError, AttributeError):
            pass  # no manifest yet (or a broken one): the files are checked one by one anyway

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def key(self, kind: str, source: str, settings: dict[str, Any]) -> str:
        return _digest(_VERSION, kind, source, self.model, settings)

    def load(self, key: str) -> torch.Tensor | None:
        from safetensors.torch import load_file

        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return load_file(p)["tensor"]
        except Exception as e:  # a truncated or foreign file: encoded again
            log.warning("cache: %s is unreadable (%s); encoding again", p.name, e)
            return None

    def has(self, key: str) -> bool:
        """The file is there and readable as safetensors with its tensor (its header only is read)."""
        from safetensors import safe_open

        p = self.path(key)
        if not p.is_file():
            return False
        try:
            with safe_open(str(p), framework="pt") as f:
                return "tensor" in f.keys()  # noqa: SIM118 (safe_open is no dict)
        except Exception:  # a truncated or foreign file: encoded again
            return False

    def save(self, key: str, tensor: torch.Tensor, kind: str, source: str, settings: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        # Each process its own temporary name: the ranks of one machine may write the same entry at once.
        tmp = p.with_suffix(f".{os.getpid()}.tmp")
        save_file({"tensor": tensor.detach().to("cpu").contiguous()}, tmp)
        os.replace(tmp, p)  # never a half-written file under the final name
        self.entries[key] = {"kind": kind, "source": source[:500], "settings": settings}

    def write_manifest(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{MANIFEST}.{os.getpid()}.tmp"
        tmp.write_text(
            json.dumps({"version": _VERSION, "model": self.model, "entries": self.entries}, indent=1),
            encoding="utf-8",
        )
        os.replace(tmp, self.root / MANIFEST)


class DiskTensors(MutableMapping[Any, torch.Tensor]):
    """A cache mapping whose values are read from disk on access (those set in memory stay there)."""

    def __init__(self, cache: DiskCache, keys: dict[Any, str]):
        self.disk = cache
        self.keys_on_disk = keys
        self.memory: dict[Any, torch.Tensor] = {}

    def __getitem__(self, k: Any) -> torch.Tensor:
        if k in self.memory:
            return self.memory[k]
        t = self.disk.load(self.keys_on_disk[k])
        if t is None:
            raise KeyError(k)
        return t

    def __setitem__(self, k: Any, v: torch.Tensor) -> None:
        self.memory[k] = v

    def __delitem__(self, k: Any) -> None:
        self.memory.pop(k, None)
        self.keys_on_disk.pop(k, None)

    def __contains__(self, k: object) -> bool:
        return k in self.memory or k in self.keys_on_disk

    def __iter__(self) -> Iterator[Any]:
        yield from self.memory
        yield from (k for k in self.keys_on_disk if k not in self.memory)

    def __len__(self) -> int:
        return len(self.memory) + sum(1 for k in self.keys_on_disk if k not in self.memory)


def run_cache(run_dir: Path, model_path: str, variant: str, dtype: torch.dtype) -> DiskCache:
    from flux2_lora.memory.estimate import _read_stamp

    model = {"path": model_path, "variant": variant, "dtype": str(dtype), "stamp": _read_stamp(model_path)}
    return DiskCache(run_dir / CACHE_DIR, model)


class DiskLatentSource(LatentSource):
    """:class:`LatentSource` whose cache lives in a :class:`DiskCache` (encoded only when missing)."""

    def __init__(self, disk: DiskCache, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.disk = disk

    def _settings(self, item: int, flip: bool) -> dict[str, Any]:
        ds = self.config.dataset
        crop = "center" if ds.center_crop else derive_seed(self.config.training.seed, 2, item)
        return {"target": self.targets[item], "flip": flip, "crop": crop}

    @torch.no_grad()
    def fill_cache(self, batch: int = 4) -> None:
        flips = (False, True) if self.config.dataset.random_flip else (False,)
        digests: dict[Path, str] = {}
        keys: dict[Any, str] = {}
        missing: dict[Any, list[tuple[int, bool]]] = {}
        for i, item in enumerate(self.items):
            digest = digests.get(item.path) or digests.setdefault(item.path, file_digest(item.path))
            for f in flips:
                key = self.disk.key("latent", digest, self._settings(i, f))
                keys[(i, f)] = key
                if self.disk.has(key):
                    self.disk.hits += 1
                else:
                    missing.setdefault(self.targets[i], []).append((i, f))
        for group in missing.values():  # grouped by target shape so every VAE batch stacks
            for k in range(0, len(group), batch):
                chunk = group[k : k + batch]
                pixels = torch.stack(
                    [self._pixels(i, f, derive_seed(self.config.training.seed, 2, i)) for i, f in chunk]
                )
                for (i, f), lat in zip(chunk, encode_images(self.vae, pixels).to("cpu")):
                    self.disk.misses += 1
                    self.disk.save(keys[(i, f)], lat, "latent", str(self.items[i].path), self._settings(i, f))
        self.disk.write_manifest()
        self.cache = DiskTensors(self.disk, keys)  # type: ignore[assignment]
        self.fill_references()


class DiskPromptSource(PromptSource):
    """:class:`PromptSource` whose cache lives in a :class:`DiskCache` (encoded only when missing)."""

    def __init__(self, disk: DiskCache, *args: Any, quantization: str = "none", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.disk = disk
        self.settings = {
            "max_sequence_length": self.max_sequence_length,
            "layers": list(self.out_layers),
            "quantization": quantization,
        }

    def fill_cache(self, prompts: list[str], batch: int = 8) -> None:
        keys = {p: self.disk.key("text", p, self.settings) for p in dict.fromkeys(prompts)}
        missing = []
        for p, key in keys.items():
            if self.disk.has(key):
                self.disk.hits += 1
            else:
                missing.append(p)
        for start in range(0, len(missing), batch):
            chunk = missing[start : start + batch]
            for p, e in zip(chunk, self.encode(chunk).to("cpu")):
                self.disk.misses += 1
                self.disk.save(keys[p], e, "text", p, self.settings)
        self.disk.write_manifest()
        cache: Any = self.cache
        if not isinstance(cache, DiskTensors):
            cache = DiskTensors(self.disk, {})
            self.cache = cache
        cache.keys_on_disk.update(keys)
