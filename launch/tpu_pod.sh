#!/bin/bash
# Cloud TPU pod slice: run the same command on every host of the slice.
#   launch/tpu_pod.sh my-tpu us-central2-b configs/bt_in1k.py gs://bucket/runs/bt_in1k --config.data.source=tfds ...
# jax.distributed.initialize() discovers the pod's hosts by itself on TPU VMs.
set -euo pipefail
TPU=${1:?tpu name}; ZONE=${2:?zone}; CONFIG=${3:?config}; WORKDIR=${4:?workdir}; shift 4
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
  "cd ~/barlow_jax && BARLOW_JAX_DISTRIBUTED=1 python -m barlow_jax.main --config=$CONFIG --workdir=$WORKDIR $*"
