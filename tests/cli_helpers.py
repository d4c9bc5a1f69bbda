"""Running the CLI in a subprocess with N fake CPU devices (shared by CLI tests)."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Environment for the runs that must execute the optimised program users get
# (tests/conftest.py turns XLA's optimisation passes off for the rest of the suite).
OPTIMIZED = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "false"}


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


def run_cli(args, n_devices=1, module="barlow_jax.main", timeout=600, env=None):
    """``python -m module args``; ``env``: extra environment variables."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                          env={**cli_env(n_devices), **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


def read_metrics(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_until_step_then_sigterm(args, workdir, step, n_devices=1, timeout=600, env=None):
    """Starts the CLI, sends SIGTERM once metrics.jsonl shows ``step``; returns (rc, output)."""
    proc = subprocess.Popen([sys.executable, "-m", "barlow_jax.main", *args], cwd=ROOT,
                            env={**cli_env(n_devices), **(env or {})}, stdout=subprocess.PIPE,
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


def straight_and_interrupted_runs(common_args, tmp_path, steps, n_devices=1, signal_at=3,
                                  env=None):
    """Runs the CLI straight, and again with a SIGTERM at ``signal_at`` then a resume.

    Checks what every such test needs (exit 0, the signal was seen before the
    end, the stop step was checkpointed, the resume said so, logged steps are
    1..steps without gap or duplicate) and returns (straight_records,
    resumed_records, straight_workdir, resumed_workdir, straight_stdout).
    """
    straight = str(tmp_path / "straight")
    r = run_cli(common_args + [f"--workdir={straight}"], n_devices, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = read_metrics(straight)
    assert [m["step"] for m in ref] == list(range(1, steps + 1))

    work = str(tmp_path / "interrupted")
    rc, out = run_until_step_then_sigterm(common_args + [f"--workdir={work}"], work,
                                          step=signal_at, n_devices=n_devices, env=env)
    assert rc == 0, out[-3000:]
    assert "Received SIGTERM" in out, out[-3000:]
    stopped = max(m["step"] for m in read_metrics(work))
    assert stopped < steps, "the run finished before the signal; the test saw no interruption"
    assert os.path.isdir(os.path.join(work, "checkpoints", str(stopped)))

    r2 = run_cli(common_args + [f"--workdir={work}"], n_devices, env=env)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "Resumed from" in r2.stdout
    got = read_metrics(work)
    assert [m["step"] for m in got] == list(range(1, steps + 1))  # no gap, no duplicate
    return ref, got, straight, work, r.stdout


def write_untrained_run(workdir, step, config=None):
    """A workdir as training leaves it (config.json + a checkpoint at ``step``), untrained."""
    import jax
    import jax.numpy as jnp
    from barlow_jax import checkpointing
    from barlow_jax.models import build_ssl_net
    from barlow_jax.state import TrainState
    if config is None:
        from configs import smoke
        config = smoke.get_config()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(checkpointing.config_to_dict(config), f)
    net = build_ssl_net(config)
    size = config.data.image_size
    v = jax.jit(lambda k: net.init(k, jnp.zeros((2, size, size, 3))))(jax.random.key(0))
    ckpt = checkpointing.Checkpointer(workdir)
    ckpt.save(step, TrainState(step=jnp.int32(step), params=v["params"],
                               batch_stats=v["batch_stats"], opt_state={}, target=None))
    ckpt.close()
    return workdir
