"""Multi-process trainer starts run as a child of a small supervisor that relays its output.

When another process of the job dies, or process 0's coordinator becomes
unreachable, or not every process ever starts, JAX's runtime ends the
process from C++ ("Terminating process because the JAX distributed service
detected fatal errors ..."), with a stack trace and Python's fault dump: no
Python handler can intercept it. The supervisor (``python -m barlow_jax.main``
itself; it never imports JAX) starts the real trainer as its child, relays
stdout and stderr line by line, replaces that block by one sentence and exits
1. Signals sent to the supervisor (SIGTERM, SIGINT, SIGUSR1/2, SIGHUP) go to
the child; a SIGKILLed supervisor takes its child along (Linux
PR_SET_PDEATHSIG). ``BARLOW_JAX_SUPERVISE=0`` turns it off; ``--verbose``
relays JAX's report too.
"""

from __future__ import annotations

import os
import signal
import sys

from barlow_jax.cli import argv_value
from barlow_jax.distributed import ENV_COUNT, ENV_ADDRESS, ENV_ID, short_reason

_JAX_FATAL = b"Terminating process because"


def wants_supervision(argv, environ=None) -> bool:
    """True for a multi-process trainer start that is not itself the supervised child."""
    environ = os.environ if environ is None else environ
    if environ.get("BARLOW_JAX_SUPERVISED") == "1" or environ.get(
            "BARLOW_JAX_SUPERVISE", "1").strip().lower() in ("0", "false", "no"):
        return False
    flagged = any(a.startswith(("--coordinator_address", "--num_processes", "--process_id"))
                  for a in argv[1:])
    return flagged or bool(environ.get(ENV_ADDRESS) or environ.get(ENV_COUNT)) or \
        environ.get("BARLOW_JAX_DISTRIBUTED", "").strip().lower() in ("1", "true", "yes")


def _die_with_parent():
    """In the child, before exec: SIGKILL when the supervisor dies (Linux), so a killed
    process never leaves its trainer running."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the trainer outlives a SIGKILLed supervisor
        pass


def supervise(module: str, argv) -> int:
    """Runs ``python -m module argv[1:]`` as a child and relays it (module docstring);
    returns the child's exit status, or 1 after replacing JAX's abort by one sentence."""
    import subprocess
    env = dict(os.environ, BARLOW_JAX_SUPERVISED="1")
    child = subprocess.Popen([sys.executable, "-m", module, *argv[1:]], env=env,
                             stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    fatal, said = None, False
    raw = os.environ.get("BARLOW_JAX_VERBOSE") == "1" or "--verbose" in argv
    out = getattr(sys.stderr, "buffer", None)
    for line in iter(child.stderr.readline, b""):
        if fatal is None and _JAX_FATAL in line:
            fatal = line.decode(errors="replace")
        said = said or (fatal is None and line.startswith(b"error:"))
        if fatal is None or raw:
            if out is not None:
                out.write(line)
                out.flush()
            else:
                sys.stderr.write(line.decode(errors="replace"))
    rc = child.wait()
    if fatal is None:
        return rc if rc >= 0 else 128 - rc
    if said:  # the trainer already said what happened (then JAX's abort raced it)
        return 1
    pid = argv_value(argv, "process_id") or os.environ.get(ENV_ID)
    count = argv_value(argv, "num_processes") or os.environ.get(ENV_COUNT)
    who = f"process {pid} of {count}" if pid is not None and count is not None else \
        "this process"
    status = fatal.split("absl::Status:", 1)[-1] if "absl::Status:" in fatal else fatal
    print(f"error: {who} stopped because JAX's coordination service reported a fatal error "
          f"({short_reason(status)}): another process died, process 0's coordinator became "
          f"unreachable, or not every process started; checkpoints already complete are "
          f"intact, rerun the same command on every process to resume.", file=sys.stderr,
          flush=True)
    return 1
