"""The supervisor of multi-process trainer starts (barlow_jax/supervisor.py), without JAX:
a stand-in child prints what JAX's runtime prints when it aborts, or exits, or waits for a
signal, and the supervisor must relay, summarise in one sentence, and forward signals."""

import os
import signal
import subprocess
import sys
import time

from barlow_jax import supervisor
from tests.cli_helpers import ROOT

CHILD = r'''
import os, signal, sys, time
mode = os.environ["CHILD_MODE"]
print("hello from the child", flush=True)
print("a warning on stderr", file=sys.stderr, flush=True)
if mode == "abort":
    sys.stderr.write("F1204 16:17:25.882292 23228 client.h:80] Terminating process because the "
                     "JAX distributed service detected fatal errors. This most likely indicates "
                     "that another task died; absl::Status: UNAVAILABLE: Failed to send RPC to "
                     "coordination service. Either the leader task was preempted\n"
                     "*** Check failure stack trace: ***\n    @ 0x7f SendToLog()\n")
    sys.stderr.flush()
    os.abort()
elif mode == "exit":
    sys.exit(3)
elif mode == "signal":
    signal.signal(signal.SIGTERM, lambda *a: (print("child got SIGTERM", flush=True), sys.exit(0)))
    open(os.environ["CHILD_READY"], "w").close()
    time.sleep(60)
    sys.exit(4)
'''


def _start(tmp_path, mode, *args):
    (tmp_path / "fakechild.py").write_text(CHILD)
    env = dict(os.environ, CHILD_MODE=mode, CHILD_READY=str(tmp_path / "ready"),
               PYTHONPATH=f"{tmp_path}:{ROOT}")
    env.pop("BARLOW_JAX_SUPERVISED", None)
    code = ("import sys; from barlow_jax.supervisor import supervise; "
            "sys.exit(supervise('fakechild', sys.argv))")
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_jax_abort_becomes_one_sentence(tmp_path):
    p = _start(tmp_path, "abort", "--num_processes=2", "--process_id=1")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "hello from the child" in out
    lines = err.strip().splitlines()
    assert lines[0] == "a warning on stderr" and len(lines) == 2, err
    assert lines[1].startswith("error: process 1 of 2 stopped because JAX's coordination "
                               "service reported a fatal error (UNAVAILABLE: Failed to send RPC")
    assert "another process died" in lines[1] and "Check failure" not in err


def test_exit_status_and_signals_pass_through(tmp_path):
    p = _start(tmp_path, "exit")
    assert p.communicate(timeout=60)[1].strip() == "a warning on stderr"
    assert p.returncode == 3
    p = _start(tmp_path, "signal")
    deadline = time.time() + 60
    while not (tmp_path / "ready").exists():
        assert time.time() < deadline and p.poll() is None
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0 and "child got SIGTERM" in out


def test_only_multi_process_starts_are_supervised():
    argv = ["main", "--config=c.py", "--workdir=w"]
    assert not supervisor.wants_supervision(argv, environ={})
    assert supervisor.wants_supervision(argv + ["--num_processes=2"], environ={})
    assert supervisor.wants_supervision(argv, environ={"BARLOW_JAX_DISTRIBUTED": "1"})
    assert supervisor.wants_supervision(argv, environ={"JAX_COORDINATOR_ADDRESS": "h:1"})
    assert not supervisor.wants_supervision(argv + ["--num_processes=2"],
                                            environ={"BARLOW_JAX_SUPERVISED": "1"})
    assert not supervisor.wants_supervision(argv + ["--num_processes=2"],
                                            environ={"BARLOW_JAX_SUPERVISE": "0"})
