"""SIGTERM on a slow device (issue 16, item 1): acknowledged at once, saved within one step.

The trainer runs as the CLI (``python -m barlow_jax.main``, smoke config, one
device) with every step made slow on the device: a host callback that sleeps
SLOW seconds is chained after the real step, and the step's outputs (the
state's step counter, the loss) depend on it, so the host's waits for a step
take SLOW seconds the way they do on a slow accelerator. SIGTERM is sent
while such a step runs. Expected, as docs/faults.md describes:

* a line naming the signal and what is being waited for within ACK seconds
  of the signal (well before the step in flight ends), i.e. not only after
  the save;
* no more steps dispatched: the run exits within the step in flight plus the
  save, and the checkpoint of that step is complete and loadable;
* "rerun the same command to resume" and exit status 0; metrics.jsonl intact.

The host waits for steps with ``stopping.wait_ready`` (polling, so the
Python signal handler runs during a slow step) and the handler writes the
acknowledgement straight to stdout.
"""

import os
import signal
import subprocess
import sys
import threading
import time

from barlow_jax import checkpointing
from tests.cli_helpers import ROOT, cli_env, read_metrics

SLOW = 6.0   # seconds per step on the "device"
ACK = 1.5    # the acknowledgement must come this soon after the signal

_SLOW_STEP = """
import sys, time
import jax, jax.numpy as jnp
import barlow_jax.steps as steps
real = steps.make_train_step

def _sleep(x):
    time.sleep(%(slow)s)
    return x

def slow_make(mesh, **kw):
    step = real(mesh, **kw)

    @jax.jit
    def after(state, metrics):
        loss = jax.pure_callback(_sleep, jax.ShapeDtypeStruct((), jnp.float32),
                                 metrics["loss"].astype(jnp.float32))
        state = state.replace(step=state.step + (loss * 0).astype(state.step.dtype))
        return state, dict(metrics, loss=loss)

    return lambda state, batch, dd, key: after(*step(state, batch, dd, key))

steps.make_train_step = slow_make
import runpy
sys.argv = ['barlow_jax.main'] + sys.argv[1:]
runpy.run_module('barlow_jax.main', run_name='__main__')
""" % {"slow": SLOW}


def test_sigterm_on_a_slow_device_is_acknowledged_at_once(tmp_path):
    work = str(tmp_path / "run")
    args = ["--config=configs/smoke.py", f"--workdir={work}", "--config.num_train_steps=50",
            "--config.log_every_steps=1", "--config.checkpoint_every_steps=1000"]
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_STEP, *args], cwd=ROOT,
                            env=cli_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []   # (time, line)
    reader = threading.Thread(target=lambda: [lines.append((time.time(), s))
                                              for s in proc.stdout], daemon=True)
    reader.start()
    try:
        deadline = time.time() + 900
        while time.time() < deadline and not any(r["step"] >= 2 for r in read_metrics(work)):
            assert proc.poll() is None, "".join(s for _, s in lines)[-3000:]
            time.sleep(0.05)
        time.sleep(SLOW / 3)          # inside a slow step
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=SLOW * 6 + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    ended = time.time()
    reader.join(timeout=5)
    out = "".join(s for _, s in lines)
    acks = [t for t, s in lines if "SIGTERM" in s and t >= sent]
    assert acks and acks[0] - sent < ACK, out[-3000:]
    ack_line = next(s for t, s in lines if t == acks[0])
    assert "wait" in ack_line.lower(), ack_line     # says what it is waiting for
    # At most the step in flight (one SLOW) and the save: no further steps dispatched.
    assert ended - sent < 1.5 * SLOW + 10, (ended - sent, out[-3000:])
    assert proc.returncode == 0 and "rerun the same command to resume" in out
    ckpt = checkpointing.Checkpointer(work, read_only=True)
    try:
        saved = ckpt.latest_step()
    finally:
        ckpt.close()
    assert saved is not None and f"saved step {saved}" in out
    steps = [r["step"] for r in read_metrics(work)]
    assert steps == sorted(set(steps)) and steps[-1] <= saved
    assert os.path.exists(os.path.join(work, "checkpoints", str(saved)))
