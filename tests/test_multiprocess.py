"""Several processes through the CLI on 127.0.0.1 (issue 9): launch, agreed preemption, a dead
peer, one writer per shared file, checkpoints any topology reads, hardware-free runs.

Each job is ``launch/local_multiprocess.sh 2 python -m barlow_jax.main ...`` with 4 fake CPU
devices per process (gloo collectives), the smoke config and a few steps. Every test kills
the processes it started (tests/multiprocess_helpers.Job). By default one test runs (two
processes compile from scratch: minutes on 2 cores); the others (a dead peer, a dead
coordinator, SIGTERM to both processes a step apart, SIGINT, the placement matrix,
resuming on 8 -> 4 -> 1 -> 8 devices) run with BARLOW_JAX_SLOW_TESTS=1.
"""

import glob
import os
import signal
import time

import numpy as np
import pytest

from tests.cli_helpers import read_metrics, run_cli
from tests.multiprocess_helpers import Job, free_port, losses, metrics_steps, saved_steps

STEPS = 8                        # one smoke epoch (256 examples / 32)
COMMON = ["--config=configs/smoke.py", f"--config.num_train_steps={STEPS}"]
slow = pytest.mark.skipif(os.environ.get("BARLOW_JAX_SLOW_TESTS") != "1",
                          reason="minutes of multi-process CPU runs; BARLOW_JAX_SLOW_TESTS=1")


def _close(a, b):
    """Per-step losses of two runs agree to float32 reduction-order rounding.

    An interrupted run also logs the step it stopped at (saved whatever
    log_every_steps says): at most that one step is in only one of the runs.
    """
    assert len(set(a) ^ set(b)) <= 1, (sorted(a), sorted(b))
    common = sorted(set(a) & set(b))
    np.testing.assert_allclose([a[k] for k in common], [b[k] for k in common],
                               rtol=2e-5, atol=1e-5)
    assert len({round(v, 4) for v in a.values()}) > 1  # not a constant


def _one_writer_files(work):
    """What one writer per shared file leaves: no temporary or probe files, TensorBoard
    events of process 0 only, metrics.jsonl without duplicate steps."""
    leftovers = [p for p in glob.glob(os.path.join(work, "**", "*"), recursive=True)
                 if ".tmp" in os.path.basename(p) or ".write_test" in os.path.basename(p)]
    assert not leftovers, leftovers
    events = os.listdir(os.path.join(work, "tensorboard"))
    assert events and all(".p0." in e for e in events), events
    steps = metrics_steps(work)
    assert len(steps) == len(set(steps)) and steps == sorted(steps)


def _interrupted_then_resumed(tmp_path, name, send, args=(), env=None, resume_on=2):
    """A 2 x 4 run stopped by ``send(job)``, then relaunched as ``resume_on`` processes
    (2: 2 x 4; 1: one process with 8 devices); returns (workdir, first job's logs,
    seconds from the first signal to the job's end)."""
    work = str(tmp_path / name)
    args = COMMON + [f"--workdir={work}", *args]
    with Job(tmp_path, name, 2, args, env=env) as job:
        job.wait_for_step(work, 2)
        send(job)
        rc = job.wait(timeout=600)
        stop_seconds = time.time() - job.t_signal
        logs = [job.log(0), job.log(1)]
        assert rc == 0, job.logs()
    saved = [saved_steps(log) for log in logs]
    assert saved[0] == saved[1] and len(saved[0]) == 1, job.logs()  # the same step, once each
    stopped = saved[0][0]
    assert stopped < STEPS, "the run ended before the signal took effect"
    assert all(f"[process {i}/2] Received" in logs[i] for i in range(2))
    assert os.path.isdir(os.path.join(work, "checkpoints", str(stopped)))
    if resume_on == 2:
        with Job(tmp_path, name + "_resume", 2, args, env=env) as job:
            assert job.wait(timeout=900) == 0, job.logs()
            for i in range(2):
                assert f"[process {i}/2] Resumed from {work}/checkpoints/{stopped}" in job.log(i)
    else:   # another topology: the 2-process checkpoint restored onto 1 process x 8 devices
        r = run_cli(args, n_devices=8, timeout=900, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"Resumed from {work}/checkpoints/{stopped}" in r.stdout
    every = 1 if "--config.log_every_steps=1" in args else 2
    # No gap, no duplicate: every logged step of a straight run, plus the stopping step
    # (its record is written when the stop is saved, whatever log_every_steps says).
    logged = metrics_steps(work)
    assert logged == sorted(set(logged)), logged
    straight = set(range(every, STEPS + 1, every))
    assert straight <= set(logged) <= straight | {stopped}, (logged, stopped)
    _one_writer_files(work)
    return work, logs, stop_seconds


def test_sigterm_to_one_process_stops_both_at_one_step_and_the_run_equals_one_device(tmp_path):
    work, _, stop_seconds = _interrupted_then_resumed(
        tmp_path, "one", lambda job: job.signal(1, signal.SIGTERM), resume_on=1)
    print(f"SIGTERM to process 1 only: both saved one step and exited in {stop_seconds:.1f}s")
    assert stop_seconds < 300
    # Hardware-free: 2 processes x 4 devices, interrupted and resumed on 1 process x 8
    # devices == 1 process on 1 device.
    straight = str(tmp_path / "one_device")
    r = run_cli(COMMON + [f"--workdir={straight}"], n_devices=1, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    _close(losses(read_metrics(work)), losses(read_metrics(straight)))

    # The 2-process checkpoint, read by one process on one device (the flags of a 1-process
    # job are accepted too): export and linear evaluation.
    flags = [f"--coordinator_address=127.0.0.1:{free_port()}", "--num_processes=1",
             "--process_id=0"]
    out = str(tmp_path / "backbone.pth")
    r = run_cli([f"--workdir={work}", f"--out={out}", *flags], n_devices=1,
                module="barlow_jax.export", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.getsize(out) > 0 and f"from step {STEPS} of {work}" in r.stdout
    r = run_cli([f"--workdir={work}", "--linear.augment=False", "--linear.epochs=1",
                 "--linear.train_examples=64", "--linear.test_examples=64"], n_devices=1,
                module="barlow_jax.eval.linear", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.exists(os.path.join(work, "linear_eval.json"))


@slow
def test_a_dead_peer_ends_the_survivor_with_one_sentence_and_keeps_the_checkpoint(tmp_path):
    from barlow_jax import checkpointing
    work = str(tmp_path / "dead")
    heartbeat = 10
    with Job(tmp_path, "dead", 2, COMMON + [f"--workdir={work}"],
             env={"BARLOW_JAX_HEARTBEAT_TIMEOUT": str(heartbeat)}) as job:
        job.wait_for_step(work, 6)          # the checkpoint of step 4 is written by now
        job.signal(1, signal.SIGKILL)
        rc = job.wait(timeout=heartbeat + 120)
        seconds = time.time() - job.t_signal
        survivor = job.log(0)
    print(f"survivor exited {rc} {seconds:.1f}s after its peer was killed")
    assert rc != 0 and seconds < heartbeat + 60
    errors = [line for line in survivor.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "another process" in errors[0] and "died" in errors[0], \
        survivor[-3000:]
    assert "Traceback" not in survivor and "Check failure" not in survivor
    _, variables, step = checkpointing.load_variables(work)   # the last checkpoint is whole
    assert step == 4 and all(np.isfinite(x).all() for x in
                             __import__("jax").tree.leaves(variables["params"]))


# ------------------------------------------------------------------ BARLOW_JAX_SLOW_TESTS=1

@slow
def test_sigterm_to_both_processes_a_step_apart_then_resume(tmp_path):
    def send(job):
        work = str(tmp_path / "both")
        job.signal(0, signal.SIGTERM)
        first = max(metrics_steps(work))
        deadline = time.time() + 120
        while max(metrics_steps(work)) <= first and time.time() < deadline \
                and job.proc.poll() is None:
            time.sleep(0.02)
        job.signal(1, signal.SIGTERM)

    work, _, seconds = _interrupted_then_resumed(tmp_path, "both", send,
                                                 args=["--config.log_every_steps=1"])
    print(f"SIGTERM to both a step apart: one saved step, exited in {seconds:.1f}s")
    straight = str(tmp_path / "straight8")
    r = run_cli(COMMON + [f"--workdir={straight}", "--config.log_every_steps=1"], n_devices=8,
                timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    _close(losses(read_metrics(work)), losses(read_metrics(straight)))


@slow
def test_sigint_to_one_process_is_agreed_through_the_all_reduced_flag(tmp_path):
    _, logs, seconds = _interrupted_then_resumed(
        tmp_path, "sigint", lambda job: job.signal(0, signal.SIGINT))
    assert "Received SIGINT" in logs[0] and "a stop signal on another process" in logs[1]
    print(f"SIGINT to process 0 only: exited in {seconds:.1f}s")


@slow
def test_a_dead_coordinator_ends_the_others_without_a_hang(tmp_path):
    work = str(tmp_path / "deadc")
    with Job(tmp_path, "deadc", 2, COMMON + [f"--workdir={work}"],
             env={"BARLOW_JAX_HEARTBEAT_TIMEOUT": "10"}) as job:
        job.wait_for_step(work, 2)
        job.signal(0, signal.SIGKILL)
        rc = job.wait(timeout=130)
        survivor = job.log(1)
    assert rc != 0
    errors = [line for line in survivor.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "another process" in errors[0], survivor[-3000:]
    assert "Traceback" not in survivor and "Check failure" not in survivor


@slow
@pytest.mark.parametrize("placement", ["device", "split", "host"])
def test_losses_do_not_depend_on_processes_or_devices(tmp_path, placement):
    args = COMMON + [f"--config.data.placement={placement}", "--config.num_train_steps=4"]
    runs = {}
    for name, n_dev in (("1x1", 1), ("1x8", 8)):
        work = str(tmp_path / name)
        r = run_cli(args + [f"--workdir={work}"], n_devices=n_dev, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = losses(read_metrics(work))
    work = str(tmp_path / "2x4")
    with Job(tmp_path, "2x4", 2, args + [f"--workdir={work}"]) as job:
        assert job.wait(timeout=900) == 0, job.logs()
    runs["2x4"] = losses(read_metrics(work))
    print(placement, runs)
    _close(runs["2x4"], runs["1x1"])
    _close(runs["1x8"], runs["1x1"])


@slow
def test_resume_on_8_then_4_then_1_then_8_devices_continues_the_same_run(tmp_path):
    from tests.cli_helpers import run_until_step_then_sigterm
    work, straight = str(tmp_path / "chain"), str(tmp_path / "straight")
    # 16 steps: each leg stops a few steps after its signal (steps in flight, the agreed
    # flag's lag), so three legs need more than one 8-step epoch.
    chain_steps = 2 * STEPS
    args = ["--config=configs/smoke.py", f"--config.num_train_steps={chain_steps}",
            "--config.log_every_steps=1"]
    r = run_cli(args + [f"--workdir={straight}"], n_devices=8, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    legs = []
    for n_dev in (8, 4, 1):   # each leg: SIGTERM a step or more after it resumed
        done = max(metrics_steps(work), default=0)
        rc, out = run_until_step_then_sigterm(args + [f"--workdir={work}"], work, done + 1,
                                              n_devices=n_dev, timeout=900)
        assert rc == 0 and "Received SIGTERM" in out, out[-3000:]
        legs.append((n_dev, max(metrics_steps(work))))
    r = run_cli(args + [f"--workdir={work}"], n_devices=8, timeout=900)
    assert r.returncode == 0 and "Resumed from" in r.stdout, r.stderr[-3000:]
    print("legs (devices, last step):", legs)
    assert legs[-1][1] < chain_steps and metrics_steps(work) == list(range(1, chain_steps + 1))
    _close(losses(read_metrics(work)), losses(read_metrics(straight)))
