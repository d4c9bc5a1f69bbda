"""Running the CLI in a subprocess with N fake CPU devices (shared by CLI tests)."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli_env(n_devices: int):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    # Runs of the same config share compiled programs (the interrupted, resumed and
    # straight runs of a test compile the same step); results are unaffected.
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), "barlow_jax_test_jit_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def run_cli(args, n_devices=1, module="barlow_jax.main", timeout=600):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                          env=cli_env(n_devices), capture_output=True, text=True,
                          timeout=timeout)


def read_metrics(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_until_step_then_sigterm(args, workdir, step, n_devices=1, timeout=600):
    """Starts the CLI, sends SIGTERM once metrics.jsonl shows ``step``; returns (rc, output)."""
    proc = subprocess.Popen([sys.executable, "-m", "barlow_jax.main", *args], cwd=ROOT,
                            env=cli_env(n_devices), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if any(r["step"] >= step for r in read_metrics(workdir)):
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.02)
        out, _ = proc.communicate(timeout=max(deadline - time.time(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out
