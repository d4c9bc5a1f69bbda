#!/bin/bash
# N processes of a barlow_jax command on ONE machine, joined by JAX's multi-controller
# runtime (jax.distributed) over 127.0.0.1: the CPU recipe the tests use, and a way to try
# multi-process behaviour (preemption, resuming on another process count) on a laptop.
#
#   launch/local_multiprocess.sh 2 python -m barlow_jax.main --config=configs/smoke.py --workdir=/tmp/run
#   DEVICES_PER_PROCESS=1 launch/local_multiprocess.sh 4 python -m barlow_jax.main ...
#
# Each process gets JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT, JAX_NUM_PROCESSES=N and
# JAX_PROCESS_ID=i (what --coordinator_address/--num_processes/--process_id set) and, on the
# CPU, DEVICES_PER_PROCESS fake devices. SIGTERM/SIGINT to this script go to every process
# (they save one agreed step and exit 0); a signal sent to one process only is agreed on by
# all of them too. Exit status: the first non-zero status of a process, else 0.
#
# Variables users edit (environment):
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-4}   # fake CPU devices per process (XLA_FLAGS)
PLATFORM=${PLATFORM:-cpu}                       # JAX_PLATFORMS of the processes ("" = any)
PORT=${PORT:-}                                  # coordinator port (default: a free one)
PID_FILE=${PID_FILE:-}                          # if set: the processes' pids, one a line
LOG_DIR=${LOG_DIR:-}                            # if set: process i writes LOG_DIR/process_i.log
set -uo pipefail
N=${1:?usage: launch/local_multiprocess.sh NUM_PROCESSES COMMAND...}; shift
[ $# -gt 0 ] || { echo "error: give the command to run, e.g. python -m barlow_jax.main ..." >&2; exit 2; }
if [ -z "$PORT" ]; then
  PORT=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
[ -n "$LOG_DIR" ] && mkdir -p "$LOG_DIR"
pids=()
for ((i = 0; i < N; i++)); do
  if [ -n "$LOG_DIR" ]; then out="$LOG_DIR/process_$i.log"; else out=/dev/stdout; fi
  JAX_COORDINATOR_ADDRESS="127.0.0.1:$PORT" JAX_NUM_PROCESSES="$N" JAX_PROCESS_ID="$i" \
    JAX_PLATFORMS="$PLATFORM" \
    XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$DEVICES_PER_PROCESS" \
    "$@" >>"$out" 2>&1 &
  pids+=($!)
done
[ -n "$PID_FILE" ] && printf '%s\n' "${pids[@]}" > "$PID_FILE"
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
trap 'kill -INT "${pids[@]}" 2>/dev/null' INT
rc=0
for pid in "${pids[@]}"; do
  while true; do
    wait "$pid"; code=$?
    if [ $code -gt 128 ]; then            # a trapped signal interrupted wait, or the process died of one
      if kill -0 "$pid" 2>/dev/null; then continue; fi
      wait "$pid" 2>/dev/null; again=$?
      [ $again -ne 127 ] && code=$again
    fi
    break
  done
  [ $code -ne 0 ] && [ $rc -eq 0 ] && rc=$code
done
exit $rc
