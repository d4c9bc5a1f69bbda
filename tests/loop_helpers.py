"""The training loop in this process: straight, and stopped by a real SIGTERM then resumed.

The in-process twin of tests/cli_helpers.straight_and_interrupted_runs for
tests where a subprocess adds nothing (the method's numbers, the checkpoint):
the signal is a real SIGTERM to this process, sent by a thread when
metrics.jsonl shows the step, handled by the loop's StopAgreement as in the CLI.
"""

import contextlib
import io
import os
import signal
import threading
import time

from tests.cli_helpers import read_metrics


def _train(config, workdir, mesh):
    from barlow_jax.train import train_and_evaluate
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train_and_evaluate(config, workdir, mesh=mesh)
    return out.getvalue()


def _sigterm_at(workdir, step, done: threading.Event, timeout=600):
    deadline = time.time() + timeout
    while not done.is_set() and time.time() < deadline:
        if any(r["step"] >= step for r in read_metrics(workdir)):
            os.kill(os.getpid(), signal.SIGTERM)
            return
        time.sleep(0.02)


def straight_and_interrupted_in_process(config, tmp_path, steps, mesh, signal_at=3):
    """Trains ``config`` straight, and again with a SIGTERM at ``signal_at`` then a resume.

    Checks what the CLI twin checks (the signal was seen before the end, the stop
    step was checkpointed, the resume said so, logged steps are 1..steps without
    gap or duplicate); returns (straight_records, resumed_records,
    straight_workdir, resumed_workdir, straight_stdout).
    """
    straight = str(tmp_path / "straight")
    out = _train(config, straight, mesh)
    ref = read_metrics(straight)
    assert [m["step"] for m in ref] == list(range(1, steps + 1))

    work = str(tmp_path / "interrupted")
    # A SIGTERM that arrived after the loop gave its handler back must not end pytest.
    previous = signal.signal(signal.SIGTERM, lambda *a: None)
    done = threading.Event()
    sender = threading.Thread(target=_sigterm_at, args=(work, signal_at, done), daemon=True)
    try:
        sender.start()
        interrupted = _train(config, work, mesh)
    finally:
        done.set()
        sender.join(timeout=5)
        signal.signal(signal.SIGTERM, previous)
    assert "Received SIGTERM" in interrupted, interrupted[-3000:]
    stopped = max(m["step"] for m in read_metrics(work))
    assert stopped < steps, "the run finished before the signal; the test saw no interruption"
    assert os.path.isdir(os.path.join(work, "checkpoints", str(stopped)))

    resumed = _train(config, work, mesh)
    assert "Resumed from" in resumed, resumed[-3000:]
    got = read_metrics(work)
    assert [m["step"] for m in got] == list(range(1, steps + 1))  # no gap, no duplicate
    return ref, got, straight, work, out
