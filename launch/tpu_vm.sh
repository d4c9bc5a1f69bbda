#!/bin/bash
# Cloud TPU VM slice (v4-32, v5e-64, ...): the same command on every worker of the slice.
#
#   launch/tpu_vm.sh configs/bt_in1k.py gs://my-bucket/runs/bt_in1k --config.data.source=tfds \
#       --config.data.tfds_name=imagenet2012 --config.data.tfds_data_dir=gs://my-bucket/tfds
#
# Every worker runs one process with all of its local TPU chips; JAX's TPU detection
# (BARLOW_JAX_DISTRIBUTED=1: jax.distributed.initialize() with no arguments) finds the
# coordinator, the process count and each worker's id from the TPU metadata. Workers share no
# disk: the workdir must be gs://... (checkpoints, config.json and logs are written there; the
# TFDS data too, each worker reading only its slice of the split). A maintenance event or
# preemption reaches JAX's preemption notifier on the worker it hits; every worker then saves
# the same step and exits 0; rerun this script to resume.
#
# ---- variables users edit (or pass in the environment) ----
TPU_NAME=${TPU_NAME:-my-tpu}                     # gcloud compute tpus tpu-vm create ...
ZONE=${ZONE:-us-central2-b}
PROJECT=${PROJECT:-}                             # "" = gcloud's default project
EXTRAS=${EXTRAS:-tpu,data}                       # barlow_jax extras: jax[tpu] + tf.data/TFDS
REPO_URL=${REPO_URL:-}                           # git URL of barlow_jax ("" = copy this checkout)
REMOTE_DIR=${REMOTE_DIR:-barlow_jax}             # checkout on each worker (under ~)
# ------------------------------------------------------------
set -euo pipefail
CONFIG=${1:?usage: launch/tpu_vm.sh CONFIG gs://BUCKET/WORKDIR [--config.key=value ...]}
WORKDIR=${2:?workdir}; shift 2
case "$WORKDIR" in
  gs://*) ;;
  *) echo "error: the workdir of a TPU slice must be gs://... (workers share no disk); got $WORKDIR" >&2
     exit 2;;
esac
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE" ${PROJECT:+--project="$PROJECT"})
if [ -z "$REPO_URL" ]; then
  "${GCLOUD[@]}" scp --recurse "$(cd "$(dirname "$0")/.." && pwd)" "$TPU_NAME:~/$REMOTE_DIR" \
    --worker=all "${WHERE[@]}"
  FETCH="true"
else
  FETCH="[ -d ~/$REMOTE_DIR ] || git clone $REPO_URL ~/$REMOTE_DIR"
fi
ARGS=$(printf ' %q' "$@")
"${GCLOUD[@]}" ssh "$TPU_NAME" --worker=all "${WHERE[@]}" --command "set -e; $FETCH; \
  cd ~/$REMOTE_DIR && pip install -q --upgrade -e '.[$EXTRAS]' && \
  BARLOW_JAX_DISTRIBUTED=1 PYTHONUNBUFFERED=1 python -m barlow_jax.main \
  --config=$CONFIG --workdir=$WORKDIR$ARGS"
