"""Per-block activation memory on a real GPU, to calibrate the estimate's per-block terms.

Builds reduced [klein] 4B transformers (random weights; 1+1, 2+1 and 1+2 double+single blocks) with the
harness's build (bf16, NF4 or int8 base), adds the default LoRA (rank 16), and runs two training steps
at 1024² (4096 image + 512 text tokens), with and without gradient checkpointing. For each it records
the memory held right after the second forward (the kept activations), the step's peak, and the dtype of
the hidden states entering each block. Differences between depths give the bytes one double or one
single block adds, per token and per model width d: the figures the estimate's coefficients describe.

    python benchmarks/vram/block_probe.py --out block_probe.json      (CUDA)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from measure import build_model  # noqa: E402
from tests.memory.matrix import config as make_config  # noqa: E402

GIB = 2**30
DEPTHS = [(1, 1), (2, 1), (1, 2)]


def probe(quant: str, checkpointing: bool, double: int, single: int, resolution: int) -> dict[str, Any]:
    import torch

    from flux2_lora.memory.estimate import resolve_shapes
    from flux2_lora.training.flow import flow_matching_loss
    from flux2_lora.training.model import inject_lora
    from flux2_lora.training.optim import build_optimizer
    from flux2_lora.training.trace import reduced

    config = make_config(
        f"dataset.resolution={resolution}",
        "lora.rank=16",
        f"memory.quantization={quant}",
        f"memory.gradient_checkpointing={str(checkpointing).lower()}",
        variant="klein-4b",
    )
    sh = resolve_shapes(config)
    arch = reduced(sh.arch, double, single)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")  # CPU: a check of the code path, no figures

    def allocated() -> int:
        if cuda:
            torch.cuda.synchronize()
            return torch.cuda.memory_allocated()
        return 0

    def peak() -> int:
        return torch.cuda.max_memory_allocated() if cuda else 0

    dtype = torch.bfloat16
    model = build_model(arch, dtype, quant, device)
    torch.manual_seed(0)
    inject_lora(model, config.lora, arch)
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(config.training, params)
    dtypes: set[str] = set()

    def hook(_module: Any, args: Any, kwargs: Any) -> None:
        hs = kwargs.get("hidden_states", args[0] if args else None)
        if hs is not None:
            dtypes.add(str(hs.dtype))

    handles = [
        b.register_forward_pre_hook(hook, with_kwargs=True)
        for b in [*model.transformer_blocks, *model.single_transformer_blocks]
    ]
    n, t = sh.image_tokens, sh.text_tokens
    out: dict[str, Any] = {"quant": quant, "checkpointing": checkpointing, "double": double, "single": single}
    for step in range(2):
        before = allocated()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        lat = torch.randn(1, n, arch.in_channels, device=device, dtype=dtype)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = flow_matching_loss(
                model,
                latents=lat,
                latent_ids=torch.zeros(1, n, 4, dtype=torch.long, device=device),
                prompt_embeds=torch.randn(1, t, arch.joint_attention_dim, device=device, dtype=dtype),
                text_ids=torch.zeros(1, t, 4, dtype=torch.long, device=device),
                sigmas=torch.rand(1, device=device),
                noise=torch.randn_like(lat),
                guidance=None,
            )
        after_forward = allocated()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del loss, lat
        allocated()
        if step == 1:
            out.update(
                static_gib=before / GIB,
                kept_after_forward_gib=(after_forward - before) / GIB,
                peak_above_static_gib=(peak() - before) / GIB,
            )
    out["block_input_dtypes"] = sorted(dtypes)
    out["tokens_d"] = (n + t) * arch.inner_dim
    for h in handles:
        h.remove()
    del model, optimizer, params
    if cuda:
        torch.cuda.empty_cache()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resolution", type=int, default=1024)
    args = parser.parse_args()
    rows = []
    for quant in ("none", "nf4", "int8"):
        for checkpointing in (True, False):
            got = {}
            for double, single in DEPTHS:
                try:
                    got[(double, single)] = probe(quant, checkpointing, double, single, args.resolution)
                    rows.append(got[(double, single)])
                except Exception as e:  # one setting failing must not lose the others
                    rows.append(
                        {
                            "quant": quant,
                            "checkpointing": checkpointing,
                            "error": f"{type(e).__name__}: {e}"[:300],
                        }
                    )
                args.out.write_text(json.dumps(rows, indent=1))
            if len(got) == 3:
                base, d2, s2 = got[(1, 1)], got[(2, 1)], got[(1, 2)]
                td = base["tokens_d"]
                per = {
                    "double_kept": (d2["kept_after_forward_gib"] - base["kept_after_forward_gib"]) * GIB / td,
                    "single_kept": (s2["kept_after_forward_gib"] - base["kept_after_forward_gib"]) * GIB / td,
                    "double_peak": (d2["peak_above_static_gib"] - base["peak_above_static_gib"]) * GIB / td,
                    "single_peak": (s2["peak_above_static_gib"] - base["peak_above_static_gib"]) * GIB / td,
                }
                rows.append(
                    {"quant": quant, "checkpointing": checkpointing, "per_block_bytes_per_token_d": per}
                )
                print(
                    f"{quant:5} gc={checkpointing!s:5} dtypes {base['block_input_dtypes']} "
                    + " ".join(f"{k} {v:6.2f}" for k, v in per.items())
                    + f"  (1+1 kept {base['kept_after_forward_gib']:.3f} GiB, peak {base['peak_above_static_gib']:.3f})",
                    flush=True,
                )
    args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
