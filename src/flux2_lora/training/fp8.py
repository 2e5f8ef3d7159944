"""fp8 base weights (``memory.quantization: fp8``): each frozen transformer Linear stores its weight as
float8 e4m3 with one fp32 scale per output row, and computes in the model's dtype (any GPU, the CPU too).

Half of bf16's bytes; per-row scales keep each row's largest weight at e4m3's full range, so the error is
e4m3's 3-bit mantissa (a relative step of 2⁻⁴ at most, 2⁻³ in e4m3's subnormals near zero).

This is storage, not fp8 compute: ``performance.float8`` (torchao float8 training) multiplies in fp8 from
model.dtype weights; the two do not combine (config/rules.py refuses both at once).

:class:`Fp8Linear` subclasses ``torch.nn.Linear`` so PEFT wraps it with its ordinary LoRA / DoRA layer
(PEFT dispatches on ``isinstance(..., nn.Linear)``). Its ``weight`` is a read-only property giving the
dequantised weight: what PEFT reads for the adapter's device and dtype and what DoRA's weight norm needs.
The stored tensors are ``weight_fp8`` and ``weight_scale``, frozen parameters (not buffers: DDP would
broadcast buffers on every forward), plain tensors that block swap can stream.
"""

from __future__ import annotations

from typing import Any

import torch

from flux2_lora.targets import is_quantized_linear

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 weight, fp32 scale per row) with ``weight ≈ q * scale[:, None]``."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    q = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.to(torch.float32) * scale[:, None]).to(dtype)


class _Fp8Matmul(torch.autograd.Function):
    """x @ dequant(q)ᵀ + b that saves the fp8 weight for backward, not the dequantised one (which would
    keep a model.dtype copy of every layer alive until backward)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        q: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        ctx.save_for_backward(q, scale)
        ctx.dtype, ctx.x_dtype = dtype, x.dtype
        w = dequantize_rows(q, scale, dtype)
        return torch.nn.functional.linear(x.to(dtype), w, None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, scale = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad.to(ctx.dtype) @ dequantize_rows(q, scale, ctx.dtype)).to(ctx.x_dtype)
        return grad_x, None, None, None, None


class Fp8Linear(torch.nn.Linear):
    """A frozen Linear with float8 e4m3 weights and per-row scales, computing in ``compute_dtype``."""

    def __init__(self, linear: torch.nn.Linear, compute_dtype: torch.dtype):
        torch.nn.Module.__init__(self)  # not Linear.__init__: it would allocate a dense weight
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_rows(linear.weight)
        self.weight_fp8 = torch.nn.Parameter(q, requires_grad=False)
        self.weight_scale = torch.nn.Parameter(scale, requires_grad=False)
        self.bias = (
            None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)
        )
        self.compute_dtype = compute_dtype  # PEFT reads it for the adapter's dtype, as for bnb layers

    # read-only: the stored tensors are weight_fp8 / weight_scale
    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return dequantize_rows(self.weight_fp8, self.weight_scale, self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):  # the dtype is chosen here, not by autocast
            return _Fp8Matmul.apply(x, self.weight_fp8, self.weight_scale, self.bias, self.compute_dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 per-row"


def quantize_fp8(transformer: torch.nn.Module, compute_dtype: torch.dtype) -> int:
    """Replace the transformer's quantizable Linears (the same layers as nf4 / int8) in place, one at a
    time (the dense weight of each is freed as it goes). Returns how many were replaced."""
    count = 0
    for name, module in list(transformer.named_modules()):
        if type(module) is not torch.nn.Linear or not is_quantized_linear(name):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = transformer.get_submodule(parent_name) if parent_name else transformer
        setattr(parent, child, Fp8Linear(module, compute_dtype))
        count += 1
    return count
