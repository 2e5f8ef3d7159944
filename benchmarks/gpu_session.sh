#!/usr/bin/env bash
# Everything a lent GPU is for, as one prepared script (the device tool runs it in the repo root):
#   BUDGET=540 bash benchmarks/gpu_session.sh PHASE...     phases: vram tests probe build compare levers
# vram, tests and build run side by side (memory-packed; allocated/reserved peaks are per process);
# compare and levers then run alone (they time steps), each only while the budget (seconds) lasts.
# Results and logs go to $OUT. Needs the carried wheels in .devbench/whl (the GPU image has torch,
# transformers, accelerate, torchvision; not diffusers 0.42.1, peft 0.21.2, pydantic, bitsandbytes,
# torchao, prodigyopt) and diffusers' train_dreambooth_lora_flux2_klein.py in .devbench/ext (fetched
# from diffusers' examples, never committed). TINY=1 runs the whole path at toy size on a CPU.
set -u
OUT=${OUT:-/tmp/gpu-out}
BUDGET=${BUDGET:-540}
WORK=${WORK:-/tmp/flux2-speed}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 WANDB_MODE=disabled
export FLUX2_LORA_HOME=/tmp/flux2-home
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
say() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

if ! python3 -c "import diffusers, peft, pydantic, bitsandbytes, torchao" 2>/dev/null; then
  python3 -m pip install -q --no-deps --no-index .devbench/whl/*.whl > "$OUT/pip.log" 2>&1 || cat "$OUT/pip.log"
fi
python3 - <<'PY'
import torch, diffusers, peft, transformers, accelerate, bitsandbytes, torchao
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
print("diffusers", diffusers.__version__, "peft", peft.__version__, "transformers", transformers.__version__,
      "accelerate", accelerate.__version__, "bnb", bitsandbytes.__version__, "torchao", torchao.__version__)
PY
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm --format=csv,noheader
say "setup done"

pids=()
wait_all() { for p in "${pids[@]}"; do wait "$p"; done; pids=(); }
for phase in "$@"; do
  case $phase in
    vram)
      say "vram: start"
      timeout 280 python3 benchmarks/vram/run.py --parallel-gib 110 --timeout-s 150 --deadline-s 200 \
        --out "$OUT/vram.json" > "$OUT/vram.log" 2>&1 &
      pids+=($!) ;;
    tests)
      say "gpu tests: start"
      timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/training/test_gpu.py tests/training/test_block_swap.py tests/memory/test_swap_gpu.py -s \
        > "$OUT/gpu_tests.log" 2>&1 &
      pids+=($!) ;;
    probe)
      say "block probe: start"
      timeout 200 python3 benchmarks/vram/block_probe.py --out "$OUT/block_probe.json" > "$OUT/block_probe.log" 2>&1 &
      pids+=($!) ;;
    build)
      say "build klein-4b folder: start"
      timeout 240 python3 benchmarks/speed/build_pipeline.py --out "$WORK/klein-4b" --images "$WORK/images" \
        ${TINY:+--tiny} > "$OUT/build.log" 2>&1 &
      pids+=($!) ;;
    compare)
      wait_all
      say "compare: start, $(left) s left"
      if [ "$(left)" -gt 120 ]; then
        timeout $(( $(left) - 10 )) python3 benchmarks/speed/compare.py --work "$WORK" ${TINY:+--tiny} \
          --diffusers-script .devbench/ext/train_dreambooth_lora_flux2_klein.py \
          --deadline-s $(( $(left) - 70 )) \
          ${COMPARE_ARGS:---rounds 2 --steps 30 --warmup 10 --variant performance.compile=true --variant performance.compile=true,performance.float8=true} \
          --out "$OUT/compare.json" > "$OUT/compare.log" 2>&1
        say "compare: done (exit $?)"
      fi ;;
    levers)
      wait_all
      say "levers: start, $(left) s left"
      if [ "$(left)" -gt 60 ]; then
        timeout $(( $(left) - 5 )) python3 benchmarks/speed/levers.py --work "$WORK" ${TINY:+--tiny} \
          --deadline-s $(( $(left) - 40 )) --out "$OUT/levers.json" > "$OUT/levers.log" 2>&1
        say "levers: done (exit $?)"
      fi ;;
  esac
done
wait_all
say "all phases done"
# The device returns at most 8 files: logs go back as one archive; the tails below are the summary.
for f in "$OUT"/*.log; do
  echo "=== $(basename "$f")"
  grep -v -E "Warning|warn\(|_pytree|Loading|it/s\]|kernels|torchao|register_constant" "$f" | tail -n 24
done
(cd "$OUT" && tar czf logs.tgz ./*.log && rm -f ./*.log)
