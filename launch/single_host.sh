#!/bin/bash
# Every GPU of one machine (no distributed set-up needed):
#   launch/single_host.sh configs/bt_cifar10.py workdirs/bt_cifar10 [--config.key=value ...]
set -euo pipefail
# Install once: pip install -e ".[cuda12,data]" on NVIDIA GPUs, ".[tpu,data]" on a TPU VM.
CONFIG=${1:?config file}; WORKDIR=${2:?workdir}; shift 2
exec python -m barlow_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
