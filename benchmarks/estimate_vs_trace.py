"""Analytic training-phase peak vs the meta-tensor trace of the trainer's step, over the test matrix.

    python benchmarks/estimate_vs_trace.py [--double 2 --single 3] [--variant klein-4b] [--full] [--fsdp]
                                           [--swap] [--edit]

Reduced depth keeps each trace under a second; tests/memory checks that blocks compose linearly.
``--full`` also traces each shipped variant's default preset at full depth; ``--fsdp`` traces one rank of
[dev] and [klein] 9B under torch's fully_shard on 2, 4 and 8 GPUs (full depth, the preset's settings) against
the per-GPU estimate; ``--swap`` traces block swap (the trainer's training/block_swap.py on the meta
device) for 0, 1, 2 and the most swapped blocks at reduced depth and on full-depth [klein] 4B and [dev]:
the device peak against the estimate's training phase, the host bytes against its pinned figure;
``--edit`` traces edit steps (a generated pair dataset: target 512², the largest sample's two references
1024×512 and 512², packed as the trainer packs them) at reduced depth and on full-depth models.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the matrix lives with the tests
from tests.memory.matrix import MATRIX, config, row_id, training_phase_on

from flux2_lora.config import TrainConfig
from flux2_lora.config.io import load_config
from flux2_lora.memory import estimate
from flux2_lora.memory.static import swappable_blocks
from flux2_lora.training.trace import reduced, trace_training_step
from flux2_lora.units import GIB
from flux2_lora.variants import VARIANTS, TransformerArch


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--double", type=int, default=2)
    parser.add_argument("--single", type=int, default=3)
    parser.add_argument("--variant", default="klein-4b")
    parser.add_argument("--full", action="store_true", help="also the full-depth models")
    parser.add_argument("--fsdp", action="store_true", help="only one FSDP rank per GPU count, full depth")
    parser.add_argument("--swap", action="store_true", help="only block swap: 0, 1, 2 and the most blocks")
    parser.add_argument("--edit", action="store_true", help="only edit steps (target + reference tokens)")
    args = parser.parse_args()
    arch = reduced(VARIANTS[args.variant].transformer, args.double, args.single)
    if args.swap:
        return _swap(arch, args.variant)
    if args.edit:
        return _edit(arch, args.variant)
    worst = 0.0
    for row in [] if args.fsdp else MATRIX:
        c = config(*row, variant=args.variant)
        traced = trace_training_step(c, arch)["peak_gib"]
        est = training_phase_on(c, arch)
        err = (est - traced) / traced
        worst = max(worst, abs(err))
        print(f"{row_id(row):62} trace {traced:7.3f} GiB  estimate {est:7.3f} GiB  {err:+.2%}", flush=True)
    if args.full:
        for variant in ("klein-4b", "klein-9b", "dev"):
            for extra in ([], ["memory.gradient_checkpointing=false", "dataset.resolution=512"]):
                c = config(*extra, variant=variant)
                traced = trace_training_step(c)["peak_gib"]
                est = estimate(c, kernels="trace").phases["training"]
                err = (est - traced) / traced
                worst = max(worst, abs(err))
                label = f"{variant} full depth {' '.join(extra) or 'defaults'}"
                print(f"{label:62} trace {traced:7.3f} GiB  estimate {est:7.3f} GiB  {err:+.2%}", flush=True)
    if args.fsdp:
        for variant in ("dev", "klein-9b"):
            for n in (2, 4, 8):
                c, _ = load_config(
                    presets=[variant],
                    overrides=["distributed.strategy=fsdp", f"distributed.num_processes={n}"],
                )
                traced = trace_training_step(c)["peak_gib"]
                est = estimate(c, kernels="trace").phases["training"]
                err = (est - traced) / traced
                worst = max(worst, abs(err))
                label = f"{variant} FSDP rank of {n} GPUs"
                print(f"{label:62} trace {traced:7.3f} GiB  estimate {est:7.3f} GiB  {err:+.2%}", flush=True)
    print(f"worst |error| {worst:.2%} (target < 3%)")
    return 0 if worst < 0.03 else 1


def _swap(arch: TransformerArch, variant: str) -> int:
    worst = 0.0
    cases: list[tuple[str, TransformerArch | None]] = [(variant, arch), ("klein-4b", None), ("dev", None)]
    for name, shape in cases:
        most = swappable_blocks(shape or VARIANTS[name].transformer)
        for n in sorted({0, 1, 2, most}):
            c = config("memory.gradient_checkpointing=true", f"memory.blocks_to_swap={n}", variant=name)
            traced = trace_training_step(c, shape)
            if shape is None:
                est = estimate(c, kernels="trace")
                device, pinned = est.phases["training"], est.swap["pinned_gib"] if est.swap else 0.0
            else:
                device, pinned = training_phase_on(c, shape), _pinned_on(c, shape)
            err = (device - traced["peak_gib"]) / traced["peak_gib"]
            worst = max(worst, abs(err))
            depth = f"{shape.num_layers}+{shape.num_single_layers} blocks" if shape else "full depth"
            label = f"{name} {depth} swap {n}"
            print(
                f"{label:34} device trace {traced['peak_gib']:7.3f} GiB  estimate {device:7.3f} GiB  {err:+.2%}"
                f"  host trace {traced['host_gib']:7.3f} GiB  pinned {pinned:7.3f} GiB"
                f"  copies {int(traced.get('swap_copies', 0))}",
                flush=True,
            )
    print(f"worst |error| {worst:.2%} (target < 3%)")
    return 0 if worst < 0.03 else 1


def _edit(arch: TransformerArch, variant: str) -> int:
    import tempfile

    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        (data / "refs").mkdir(parents=True)
        for name in ("a", "b"):
            Image.new("RGB", (512, 512)).save(data / f"{name}.png")
        for ref, size in (("a_0", (1024, 512)), ("a_1", (512, 512)), ("b", (768, 768))):
            Image.new("RGB", size).save(data / "refs" / f"{ref}.png")
        common = [f"dataset.path={data}", "dataset.reference_path=refs", "dataset.resolution=512"]
        cases: list[tuple[str, TransformerArch | None, list[str]]] = [
            (variant, arch, []),
            (variant, arch, ["memory.gradient_checkpointing=false"]),
            (variant, arch, ["training.batch_size=2", "lora.target_modules=[all-linear]"]),
            (variant, arch, ["lora.use_dora=true", "training.optimizer=adafactor"]),
            ("klein-4b", None, []),
            ("klein-9b", None, ["memory.quantization=nf4"]),
            ("dev", None, []),
        ]
        worst = 0.0
        for name, shape, extra in cases:
            c = config(*common, *extra, variant=name)
            traced = trace_training_step(c, shape)
            est = training_phase_on(c, shape) if shape else estimate(c, kernels="trace").phases["training"]
            err = (est - traced["peak_gib"]) / traced["peak_gib"]
            worst = max(worst, abs(err))
            depth = f"{shape.num_layers}+{shape.num_single_layers} blocks" if shape else "full depth"
            label = f"{name} {depth} edit 1024 + 3072 ref tokens {' '.join(extra) or 'defaults'}"
            print(
                f"{label:100} trace {traced['peak_gib']:7.3f} GiB  estimate {est:7.3f} GiB  {err:+.2%}",
                flush=True,
            )
    print(f"worst |error| {worst:.2%} (target < 3%)")
    return 0 if worst < 0.03 else 1


def _pinned_on(c: TrainConfig, arch: TransformerArch) -> float:
    from flux2_lora.memory.static import block_swap

    if not c.memory.blocks_to_swap:
        return 0.0
    return block_swap(arch, 2, c.memory.quantization, c.memory.blocks_to_swap).pinned / GIB


if __name__ == "__main__":
    raise SystemExit(main())
