#!/bin/bash
# Open MPI (mpirun) on GPU machines: ONE process per GPU.
#
#   HOSTS=node1:8,node2:8 launch/mpirun.sh configs/bt_in1k.py /shared/runs/bt_in1k \
#       --config.data.path=/data/imagenet
#
# JAX's Open MPI detection (BARLOW_JAX_DISTRIBUTED=1) reads the coordinator from mpirun's
# environment (OMPI_MCA_orte_hnp_uri / PMIx), the process count and rank from
# OMPI_COMM_WORLD_SIZE/RANK, and gives each process the GPU number of its local rank
# (local_device_ids=[OMPI_COMM_WORLD_LOCAL_RANK]): so one process per GPU, HOSTS listing as
# many slots per node as it has GPUs. The workdir must be on a filesystem every node sees.
# SIGTERM/SIGINT to mpirun reach every process: they save one agreed step and exit 0.
#
# ---- variables users edit (or pass in the environment) ----
HOSTS=${HOSTS:-localhost:8}                      # host:slots,... (slots = GPUs of the host)
NP=${NP:-}                                       # processes; "" = the sum of the slots
PYTHON=${PYTHON:-python}                         # the environment with jax[cuda12] and barlow_jax
MPIRUN=${MPIRUN:-mpirun}
# ------------------------------------------------------------
set -euo pipefail
CONFIG=${1:?usage: launch/mpirun.sh CONFIG WORKDIR [--config.key=value ...]}
WORKDIR=${2:?workdir}; shift 2
if [ -z "$NP" ]; then
  NP=0; IFS=, read -ra H <<< "$HOSTS"; for h in "${H[@]}"; do NP=$((NP + ${h##*:})); done
fi
exec "$MPIRUN" -np "$NP" -H "$HOSTS" --bind-to none \
  -x BARLOW_JAX_DISTRIBUTED=1 -x PYTHONUNBUFFERED=1 -x PATH -x LD_LIBRARY_PATH \
  "$PYTHON" -m barlow_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
