"""Running the CLI as N processes on 127.0.0.1 through launch/local_multiprocess.sh."""

import json
import os
import re
import signal
import socket
import subprocess
import time

from tests.cli_helpers import ROOT, cli_env, read_metrics

SCRIPT = os.path.join(ROOT, "launch", "local_multiprocess.sh")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Job:
    """``launch/local_multiprocess.sh N python -m MODULE ARGS`` with each process's log and pid.

    Always used as a context manager: on exit every process it started is killed (by pid).
    """

    def __init__(self, tmp_path, name, n, args, devices=4, module="barlow_jax.main", env=None):
        self.dir = tmp_path / f"{name}_job"
        self.dir.mkdir()
        self.n = n
        e = cli_env(devices)
        e.update(DEVICES_PER_PROCESS=str(devices), PID_FILE=str(self.dir / "pids"),
                 LOG_DIR=str(self.dir), PORT=str(free_port()), **(env or {}))
        self.proc = subprocess.Popen(["bash", SCRIPT, str(n), "python", "-m", module, *args],
                                     cwd=ROOT, env=e, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.t_signal = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for pid in self.pids(wait=False):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)

    def pids(self, wait=True):
        path = self.dir / "pids"
        deadline = time.time() + (60 if wait else 0)
        while wait and not (path.exists() and len(path.read_text().split()) == self.n):
            assert time.time() < deadline, "the launcher wrote no pid file"
            time.sleep(0.05)
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def log(self, i) -> str:
        path = self.dir / f"process_{i}.log"
        text = path.read_text() if path.exists() else ""
        return "\n".join(line for line in text.splitlines() if not line.startswith("[Gloo]"))

    def logs(self):
        return "\n".join(f"--- process {i}\n{self.log(i)[-3000:]}" for i in range(self.n))

    def wait_for_step(self, workdir, step, timeout=900):
        """Returns once metrics.jsonl shows ``step``; fails if the job ends first."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(r["step"] >= step for r in read_metrics(workdir)):
                return
            assert self.proc.poll() is None, f"the job ended before step {step}:\n{self.logs()}"
            time.sleep(0.05)
        raise AssertionError(f"no step {step} within {timeout}s:\n{self.logs()}")

    def signal(self, i, sig):
        self.t_signal = self.t_signal or time.time()
        try:
            os.kill(self.pids()[i], sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout=900) -> int:
        try:
            self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the job did not end within {timeout}s (a hang):\n"
                                 f"{self.logs()}") from None
        return self.proc.returncode


def saved_steps(log: str):
    return [int(s) for s in re.findall(r"Received [^:]*: saved step (\d+)", log)]


def losses(records):
    return {r["step"]: r["loss"] for r in records}


def metrics_steps(workdir):
    return [r["step"] for r in read_metrics(workdir)]


def jsonl(path):
    return [json.loads(line) for line in open(path) if line.strip()]
