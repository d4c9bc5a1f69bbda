#!/bin/bash
# CIFAR-10 time-to-accuracy on one GPU (issue 13 item 2): trains configs/bt_cifar10_fast.py
# for at most TRAIN_SECONDS of wall clock (SIGTERM then: the trainer saves and exits 0),
# runs the linear probe on the saved backbone, and writes into $OUT (default: the workdir):
#   metrics.jsonl (the run's log), knn_vs_minutes.png, linear_eval.json and results.json
#   (kNN top-1 per wall-clock minute, final kNN, linear-probe top-1, pairs/s, seconds).
# The whole script is sized to about 10 minutes on one H200: TRAIN_SECONDS=480 of training
# (compile and dataset upload included) + the probe on precomputed features (about a minute).
#   launch/cifar10_fast_h200.sh [WORKDIR] [--config.key=value ...]
# Variables users edit:
TRAIN_SECONDS=${TRAIN_SECONDS:-480}
PROBE_EPOCHS=${PROBE_EPOCHS:-100}
CONFIG=${CONFIG:-configs/bt_cifar10_fast.py}
set -uo pipefail
WORKDIR=${1:-workdirs/bt_cifar10_fast}; shift || true
OUT=${OUT:-$WORKDIR}
mkdir -p "$WORKDIR" "$OUT"
T0=$(date +%s)
# SIGTERM at the budget: the trainer finishes the step, saves it and exits 0; KILL 60 s later.
timeout --signal=TERM --kill-after=60 "$TRAIN_SECONDS" \
  python -m barlow_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@" 2>&1 | tee "$OUT/train.log"
T1=$(date +%s)
# Features precomputed once (--linear.augment=False): minutes -> seconds; the protocol with
# augmentation is `python -m barlow_jax.eval.linear --workdir=$WORKDIR` (not timed here).
python -m barlow_jax.eval.linear --workdir="$WORKDIR" --linear.augment=False \
  --linear.epochs="$PROBE_EPOCHS" 2>&1 | tee "$OUT/linear.log"
T2=$(date +%s)
python - "$WORKDIR" "$OUT" "$((T1 - T0))" "$((T2 - T1))" <<'PY'
import json, os, sys
work, out, train_s, probe_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
recs = [json.loads(l) for l in open(os.path.join(work, "metrics.jsonl"))]
# Wall clock of each logged step: training time between logs + the kNN time spent so far.
t, prev, curve = 0.0, 0, []
for r in recs:
    t += r.get("step_time", 0.0) * (r["step"] - prev) + r.get("knn_seconds", 0.0)
    prev = r["step"]
    if "knn_top1" in r:
        curve.append({"minutes": t / 60, "step": r["step"], "epoch": r["epoch"],
                      "knn_top1": r["knn_top1"]})
lin = json.load(open(os.path.join(work, "linear_eval.json")))
res = {"config": os.environ.get("CONFIG", "configs/bt_cifar10_fast.py"),
       "train_wall_seconds": train_s, "probe_wall_seconds": probe_s,
       "steps": recs[-1]["step"], "epochs": recs[-1]["epoch"],
       "pairs_per_sec_last": recs[-1].get("pairs_per_sec"),
       "knn_time_fraction": recs[-1].get("knn_time_fraction"),
       "knn_curve": curve, "knn_top1_final": curve[-1]["knn_top1"] if curve else None,
       "linear_top1_final": lin["final"]["top1"], "linear_top1_best": lin["best"]["top1"]}
json.dump(res, open(os.path.join(out, "results.json"), "w"), indent=2)
if os.path.abspath(out) != os.path.abspath(work):
    open(os.path.join(out, "metrics.jsonl"), "w").writelines(
        json.dumps(r, sort_keys=True) + "\n" for r in recs)
try:
    import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([c["minutes"] for c in curve], [c["knn_top1"] for c in curve], "o-")
    ax.axhline(87, ls="--", c="gray"); ax.set_xlabel("training wall clock (min)")
    ax.set_ylabel("kNN top-1 (%)"); ax.set_title("Barlow Twins, CIFAR-10, one GPU")
    fig.tight_layout(); fig.savefig(os.path.join(out, "knn_vs_minutes.png"), dpi=120)
except ImportError:
    pass
print(json.dumps({k: v for k, v in res.items() if k != "knn_curve"}, indent=2))
PY
