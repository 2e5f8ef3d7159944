"""An exponential moving average (EMA) of the trainable adapter (training.ema_decay > 0).

Only the adapter's trainable tensors are averaged, in fp32, keyed by the same PEFT keys as the adapter's
state dict (:func:`flux2_lora.training.distributed.full_adapter_state`), so the EMA is exported by the
same writer as the LoRA and loads the same way. After every ``update_every``-th optimizer step:
``ema ← decay·ema + (1 − decay)·weights``. It starts from the initial adapter (B = 0: a LoRA that does
nothing), as SimpleTuner's and ai-toolkit's do, with no decay warm-up, so its value at step N is a pure
function of the weights at the update steps: a resumed run (the EMA is in every checkpoint) gives the
same file bit for bit.

The EMA is kept by the main process only: it alone writes the LoRA files and draws the samples. FSDP
over several processes is refused by the config rules (each process would hold only a shard).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch

from flux2_lora.config import TrainingSection


class AdapterEMA:
    def __init__(self, model: torch.nn.Module, decay: float, update_every: int, device: torch.device):
        from flux2_lora.training.distributed import _peft_names

        if not 0 < decay < 1:
            raise ValueError(f"training.ema_decay: must be in (0, 1) for an EMA (got {decay})")
        self.decay = decay
        self.update_every = update_every
        self.device = device
        params = dict(model.named_parameters())
        names = _peft_names(model)  # PEFT key → parameter name
        self.keys = list(names)
        self.params = [params[names[k]] for k in self.keys]
        self.shadow = [p.detach().to(device, torch.float32, copy=True) for p in self.params]

    @torch.no_grad()
    def reset(self) -> None:
        """Restart the average from the adapter's current weights."""
        for shadow, p in zip(self.shadow, self.params, strict=True):
            shadow.copy_(p.detach())

    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.shadow)

    @torch.no_grad()
    def update(self, step: int) -> bool:
        """After optimizer step ``step`` (1-based): average the weights in when ``step`` is an update step."""
        if step % self.update_every:
            return False
        live = [p.detach().to(self.device, torch.float32) for p in self.params]
        torch._foreach_lerp_(self.shadow, live, 1.0 - self.decay)  # s + (1 − d)(p − s) = d·s + (1 − d)·p
        return True

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA by PEFT key, on the CPU (what checkpoints store and the export writes)."""
        return {k: t.detach().cpu().contiguous() for k, t in zip(self.keys, self.shadow, strict=True)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore a checkpoint's EMA; keys or shapes other than this adapter's are a ValueError."""
        missing, extra = set(self.keys) - set(state), set(state) - set(self.keys)
        if missing or extra:
            names = sorted(missing or extra)[:3]
            raise ValueError(f"{'lacks' if missing else 'has unknown'} adapter tensor(s) {', '.join(names)}")
        for key, shadow in zip(self.keys, self.shadow, strict=True):
            value = state[key]
            if tuple(value.shape) != tuple(shadow.shape):
                raise ValueError(f"{key} has shape {tuple(value.shape)}, this adapter {tuple(shadow.shape)}")
            shadow.copy_(value.to(torch.float32))

    @contextlib.contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """Inside: the model's adapter holds the EMA weights (for samples); after: the live ones, exactly.
        The live weights wait in host RAM meanwhile, so sampling needs no second adapter on the GPU."""
        saved = [p.detach().to("cpu", copy=True) for p in self.params]
        try:
            for p, s in zip(self.params, self.shadow, strict=True):
                p.copy_(s)
            yield
        finally:
            for p, s in zip(self.params, saved, strict=True):
                p.copy_(s)


def make_ema(
    training: TrainingSection, model: torch.nn.Module, train_device: torch.device, is_main: bool
) -> AdapterEMA | None:
    """The EMA the config asks for (on the training device or the CPU), kept by the main process only;
    None when off. ``model``: the unwrapped transformer with its adapter, before any step."""
    if training.ema_decay == 0 or not is_main:
        return None
    device = torch.device("cpu") if training.ema_device == "cpu" else train_device
    return AdapterEMA(model, training.ema_decay, training.ema_update_every, device)
