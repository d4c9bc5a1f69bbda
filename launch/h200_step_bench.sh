#!/bin/bash
# Issue 12, item 4: the Barlow Twins training step on one H200, beside the official PyTorch
# step, in the same run. Every row appends one JSON line to $OUT/results.jsonl and the log
# to $OUT/bench.log; $OUT/summary.md is the table for docs/performance.md.
#
#   OUT=results/h200_step launch/h200_step_bench.sh            # the default rows (~12 min)
#   ROWS="jax_b256 torch_shipped" launch/h200_step_bench.sh     # a subset, in that order
#
# Rows (each is one command; the commands are printed into summary.md):
#   jax_b256            barlow_jax.bench, bt_in1k at batch 256: the step train.py runs
#   jax_b256_two_pass   the same with the views one after the other (lever: one pass)
#   jax_b512            batch 512 (pairs per step; more rows per kernel)
#   jax_b256_remat      rematerialised residual blocks (lever: memory for compute)
#   jax_b256_lhs        XLA latency-hiding scheduler + collective combining flags
#   jax_b256_per_use    gradients reduced per use (the old step's reduction)
#   torch_shipped       official main.py step as shipped (fp16 autocast, NCHW)
#   torch_channels_last the same, channels_last
#   torch_bf16_compile  bf16 autocast + channels_last + torch.compile
#   torch_fp32          the official step without autocast (the CPU check's row)
# A tiny CPU check of the plumbing (no GPU; what tests/test_h200_scripts.py runs):
#   CONFIG=configs/smoke.py B=32 B2=64 TORCH_EXTRA="--arch=tiny --size=16 --projector=64-64" \
#   JAX_EXTRA="--fake_devices=1" STEPS=2 ROWS="jax_b256 torch_fp32" launch/h200_step_bench.sh
# On one GPU there is no cross-device traffic: the collective levers cost nothing there and
# are measured for completeness; their byte counts are in the JSON of every row.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/h200_step}
ROWS=${ROWS:-"jax_b256 torch_shipped jax_b256_two_pass jax_b512 torch_bf16_compile jax_b256_remat"}
STEPS=${STEPS:-20}
CONFIG=${CONFIG:-configs/bt_in1k.py}
B=${B:-256}          # the batch of the b256 rows (image pairs)
B2=${B2:-512}        # the batch of the b512 row
JAX_EXTRA=${JAX_EXTRA:-}
TORCH_EXTRA=${TORCH_EXTRA:-}
ROW_TIMEOUT=${ROW_TIMEOUT:-300}
mkdir -p "$OUT"
LOG="$OUT/bench.log"
mkdir -p "$OUT/rows"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  python -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
  python -c "import torch; print('torch', torch.__version__)" ; } 2>&1 | tee -a "$LOG"

JAX="python -m barlow_jax.bench --config=$CONFIG --steps=$STEPS --warmup=3 $JAX_EXTRA"
TORCH="python launch/h200_torch_reference.py --steps=$STEPS --warmup=3 $TORCH_EXTRA"
row() {  # row NAME [ENV=VALUE ...] -- COMMAND...; its JSON goes to $OUT/rows/NAME.jsonl
  local name=$1; shift
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
  rm -f "$OUT/rows/$name.jsonl"
  echo "$name: ${envs[*]+${envs[*]} }$* --json_out=$OUT/rows/$name.jsonl" \
    | tee "$OUT/rows/$name.cmd" | tee -a "$LOG"
  env ${envs[@]+"${envs[@]}"} timeout --kill-after=30 "$ROW_TIMEOUT" "$@" \
    --json_out="$OUT/rows/$name.jsonl" 2>&1 | grep -v "^W0000\|^I0000" | tee -a "$LOG"
  echo "$name exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}
for r in $ROWS; do
  case $r in
    jax_b256) row $r -- $JAX --config.batch_size=$B ;;
    jax_b256_two_pass) row $r -- $JAX --config.batch_size=$B --config.step.one_pass=False ;;
    jax_b512) row $r -- $JAX --config.batch_size=$B2 ;;
    jax_b256_remat) row $r -- $JAX --config.batch_size=$B --config.model.remat=True ;;
    jax_b256_lhs) row $r XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_all_reduce_combine_threshold_bytes=134217728" -- $JAX --config.batch_size=$B ;;
    jax_b256_per_use) row $r -- $JAX --config.batch_size=$B --config.step.grad_reduction=per_use ;;
    torch_shipped) row $r -- $TORCH --mode=shipped --batch=$B ;;
    torch_channels_last) row $r -- $TORCH --mode=channels_last --batch=$B ;;
    torch_bf16_compile) row $r -- $TORCH --mode=bf16_compile --batch=$B ;;
    torch_fp32) row $r -- $TORCH --mode=fp32 --batch=$B ;;
    *) echo "unknown row $r" | tee -a "$LOG" ;;
  esac
done

python - "$OUT" $ROWS <<'PY'
import json, os, sys
out_dir, names = sys.argv[1], sys.argv[2:]
out = ["| row | pairs/s | step ms | batch | peak GiB | MFU | command |", "|---|---|---|---|---|---|---|"]
for name in names:
    path = os.path.join(out_dir, "rows", name + ".jsonl")
    cmd = open(os.path.join(out_dir, "rows", name + ".cmd")).read().strip().split(": ", 1)[-1] \
        if os.path.exists(os.path.join(out_dir, "rows", name + ".cmd")) else ""
    if not os.path.exists(path):
        out.append(f"| {name} | failed or not run (see bench.log) | | | | | `{cmd}` |")
        continue
    r = json.loads(open(path).read().splitlines()[-1])
    mem = f"{r['peak_memory_bytes'] / 2**30:.1f}" if r.get("peak_memory_bytes") else "-"
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
    out.append(f"| {name} | {r['pairs_per_sec']:.0f} | {r['step_time_ms']:.1f} | "
               f"{r['batch_size']} | {mem} | {mfu} | `{cmd}` |")
open(os.path.join(out_dir, "summary.md"), "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
