"""The multi-process runtime: starting it, and what a process does when a peer is lost.

Starting (``initialize``), in the order the CLIs look for settings:

1. ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` on the
   command line, or ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
   ``JAX_PROCESS_ID`` in the environment: any machines, any launcher.
2. ``BARLOW_JAX_DISTRIBUTED=1`` and none of the above: JAX's own cluster
   detection (SLURM, Open MPI, Cloud TPU, Kubernetes; ``jax.distributed.initialize()``).
3. Neither: one process, all of its local devices.

Timeouts (seconds, environment): ``BARLOW_JAX_INIT_TIMEOUT`` (how long a process
waits for the others to connect, JAX's default 300) and
``BARLOW_JAX_HEARTBEAT_TIMEOUT`` (after how long without heartbeats a process is
declared dead, JAX's default 100). ``JAX_LOCAL_DEVICE_IDS=0,1,...`` restricts the
GPUs a process uses (JAX reads it; launch/slurm_gpu.sbatch sets it).
``BARLOW_JAX_CLUSTER_DETECTION`` names one of JAX's detection methods (e.g.
``mpi4py`` for Open MPI 5, whose mpirun no longer sets what JAX's ``ompi`` reads).

Stopping every process at the same step on SIGTERM/SIGINT (``StopAgreement``)
is ``barlow_jax.stopping``. A dead peer (SIGKILL, lost machine) cannot be
agreed with: the survivors' next collective fails and ``peer_failure_message``
makes that one sentence (``PeerLost``, then ``exit_now``); where JAX's runtime
itself aborts the process instead (a dead coordinator, missed heartbeats),
``barlow_jax.supervisor`` replaces its C++ report by one sentence.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from typing import Optional

ENV_ADDRESS, ENV_COUNT, ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"


class DistributedInitError(RuntimeError):
    """The multi-process runtime could not start; the message says why and what to do."""


class PeerLost(RuntimeError):
    """Another process of the job died; the message is one sentence (``peer_failure_message``)."""


def define_flags(flags_module=None, flag_values=None):
    """Defines --coordinator_address, --num_processes, --process_id (once) on absl flags.

    ``flag_values``: the ``absl.flags.FlagValues`` to define them on; None for
    ``flags_module.FLAGS`` (absl's global flags).
    """
    if flags_module is None:
        from absl import flags as flags_module
    fv = flags_module.FLAGS if flag_values is None else flag_values
    if "coordinator_address" in fv:
        return
    flags_module.DEFINE_string(
        "coordinator_address", None, f"HOST:PORT of process 0's coordinator (or ${ENV_ADDRESS}); "
        "with --num_processes and --process_id starts the multi-process runtime.", flag_values=fv)
    flags_module.DEFINE_integer("num_processes", None,
                                f"Number of processes of the job (or ${ENV_COUNT}).",
                                flag_values=fv)
    flags_module.DEFINE_integer("process_id", None,
                                f"This process's index, 0..num_processes-1 (or ${ENV_ID}).",
                                flag_values=fv)


def initialize_from_flags(values=None):
    """``initialize`` with the three flags' values (absl FLAGS by default, or a FlagValues)."""
    if values is None:
        from absl import flags
        values = flags.FLAGS
    get = (lambda k: getattr(values, k, None))
    return initialize(get("coordinator_address"), get("num_processes"), get("process_id"))


def _env_int(name: str, environ) -> Optional[int]:
    text = environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise DistributedInitError(f"{name}={text!r} is not an integer; set it to a whole "
                                   f"number or unset it.") from None


def resolve(coordinator_address=None, num_processes=None, process_id=None, environ=None):
    """(address, count, id, auto): the settings ``initialize`` will use, or all None.

    Flags win over the environment; ``auto`` is True when JAX's cluster
    detection is to fill what is missing (BARLOW_JAX_DISTRIBUTED=1).
    Raises DistributedInitError for an incomplete or inconsistent set.
    """
    environ = os.environ if environ is None else environ
    address = coordinator_address or environ.get(ENV_ADDRESS) or None
    count = num_processes if num_processes is not None else _env_int(ENV_COUNT, environ)
    pid = process_id if process_id is not None else _env_int(ENV_ID, environ)
    auto = environ.get("BARLOW_JAX_DISTRIBUTED", "").strip().lower() in ("1", "true", "yes")
    given = {"--coordinator_address": address, "--num_processes": count, "--process_id": pid}
    if not auto and all(v is None for v in given.values()):
        return None, None, None, False
    if not auto and any(v is None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        raise DistributedInitError(
            f"the multi-process runtime needs all of --coordinator_address, --num_processes "
            f"and --process_id (or ${ENV_ADDRESS}, ${ENV_COUNT}, ${ENV_ID}); "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing (or set "
            f"BARLOW_JAX_DISTRIBUTED=1 to let JAX detect SLURM, Open MPI, TPU or Kubernetes).")
    if address is not None and not re.fullmatch(r"\[?[\w.\-:]+\]?:\d{1,5}", address):
        raise DistributedInitError(
            f"--coordinator_address={address!r} is not HOST:PORT; pass the address of the "
            f"machine running process 0 and a free port, e.g. 10.0.0.1:12345.")
    if count is not None and count < 1:
        raise DistributedInitError(f"--num_processes={count} must be at least 1.")
    if pid is not None and count is not None and not 0 <= pid < count:
        raise DistributedInitError(f"--process_id={pid} must be in 0..{count - 1} for "
                                   f"--num_processes={count}; number the processes from 0.")
    return address, count, pid, auto


def short_reason(error) -> str:
    """The gist of a runtime error: its status code and first clause, without file names."""
    text = re.sub(r"\[[^\]]*\.(cc|h|py):\d+\]\s*", "", " ".join(str(error).split()))
    m = re.search(r"(DEADLINE_EXCEEDED|UNAVAILABLE|INVALID_ARGUMENT|ALREADY_EXISTS|UNKNOWN|"
                  r"INTERNAL|ABORTED|FAILED_PRECONDITION|CANCELLED)[:\s]*(.*)", text)
    code, rest = (m.group(1) + ": ", m.group(2)) if m else ("", text)
    rest = re.split(r"(?<=[a-z0-9)])\. |;", rest)[0].strip(" .")  # its first clause
    if len(rest) > 150:
        rest = rest[:150].rsplit(" ", 1)[0] + "..."
    return code + rest


_EXIT_LOCK = threading.Lock()


def _cpu_settings(environ):
    """CPU-only runs: gloo collectives, and no persistent compilation cache.

    Cross-process collectives on CPU need an implementation: gloo (TCP, no MPI).
    On CPU, JAX's cache key includes the device assignment and only process 0
    writes entries, so with a warm cache process 0 skips compiling while the
    others compile; gloo gives a peer about 30 s to join the first collective,
    and a slower peer then fails the run. Compiling on every process keeps
    them in step (GPU/TPU keys are shared across processes: untouched).
    """
    import jax
    platforms = (environ.get("JAX_PLATFORMS") or environ.get("JAX_PLATFORM_NAME") or "")
    if platforms.split(",")[0].strip() != "cpu":
        return
    for key, value in (("jax_cpu_collectives_implementation", "gloo"),
                       ("jax_enable_compilation_cache", False)):
        if key == "jax_cpu_collectives_implementation" and \
                environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
            continue
        try:
            jax.config.update(key, value)
        except (AttributeError, ValueError):  # a JAX without the option
            pass


def initialize(coordinator_address=None, num_processes=None, process_id=None,
               environ=None) -> bool:
    """Starts ``jax.distributed`` as the flags/environment say; False when single-process.

    Must run before anything touches a JAX device. A wrong, unreachable or busy
    coordinator raises DistributedInitError with one sentence.
    """
    environ = os.environ if environ is None else environ
    address, count, pid, auto = resolve(coordinator_address, num_processes, process_id, environ)
    if address is None and count is None and pid is None and not auto:
        return False
    import jax
    if jax.distributed.is_initialized():
        return True
    _cpu_settings(environ)
    kwargs = {}
    method = environ.get("BARLOW_JAX_CLUSTER_DETECTION", "").strip() or None
    if method:
        kwargs["cluster_detection_method"] = method
    for key, env in (("initialization_timeout", "BARLOW_JAX_INIT_TIMEOUT"),
                     ("heartbeat_timeout_seconds", "BARLOW_JAX_HEARTBEAT_TIMEOUT")):
        value = _env_int(env, environ)
        if value is not None:
            kwargs[key] = value
    where = (f"process {pid} of {count} with coordinator {address}"
             if address is not None and count is not None and pid is not None
             else "JAX's cluster detection (BARLOW_JAX_DISTRIBUTED=1)")
    t0 = time.time()
    if address is None and auto:
        address, count, pid = _detected(address, count, pid, method)
    if address is not None and pid is not None:
        # JAX aborts the process (C++ log + stack trace) when it cannot register with the
        # coordinator; checking the address first turns the usual mistakes into one sentence.
        _check_coordinator(address, pid, count, kwargs.get("initialization_timeout", 300))
    try:
        jax.distributed.initialize(coordinator_address=address, num_processes=count,
                                   process_id=pid, **kwargs)
    except ValueError as e:
        if "should be defined" in str(e) or "must be defined" in str(e):
            raise DistributedInitError(
                "BARLOW_JAX_DISTRIBUTED=1 but JAX detected no cluster (SLURM, Open MPI, Cloud "
                "TPU or Kubernetes) to take the coordinator, process count and id from; pass "
                "--coordinator_address, --num_processes and --process_id.") from e
        raise DistributedInitError(f"could not start the multi-process runtime as {where} "
                                   f"({short_reason(e)}).") from e
    except RuntimeError as e:  # XlaRuntimeError / JaxRuntimeError derive from RuntimeError
        waited = time.time() - t0
        raise DistributedInitError(
            f"could not start the multi-process runtime as {where} after {waited:.0f}s "
            f"({short_reason(e)}); check that process 0 runs on that host and listens on that port "
            f"(free, not firewalled), and that every process got the same "
            f"--coordinator_address and --num_processes.") from e
    return True


def barrier(name: str, timeout_s: int = 600):
    """Waits until every process got here (the coordination service, not a device collective:
    on CPU a gloo collective gives late peers only ~30 s). ``name`` must be unique per use."""
    import jax
    if jax.process_count() <= 1:
        return
    try:
        from orbax.checkpoint import multihost
        sync = multihost.get_barrier_sync_fn()
    except (ImportError, AttributeError):  # an orbax without it: a device collective
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"barlow_jax:{name}")
        return
    sync(key=f"barlow_jax:{name}", timeout_ms=int(timeout_s * 1000))


def _detected(address, count, pid, method=None):
    """What JAX's cluster detection would fill in (JAX internals; unchanged where they differ)."""
    try:
        from jax._src import clusters
        found = clusters.ClusterEnv.auto_detect_unset_distributed_params(
            address, count, pid, None, method, 300)
        return found[0], found[1], found[2]
    except Exception:  # noqa: BLE001 - detection is JAX's job; this is only a pre-check
        return address, count, pid


def _split_address(address: str):
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _check_coordinator(address: str, pid: int, count, timeout_s: float):
    """Process 0: the port must be free here. Others: the coordinator must accept TCP
    connections within ``timeout_s`` (it may start later than they do)."""
    import errno
    import socket
    host, port = _split_address(address)
    try:
        socket.getaddrinfo(host, port)
    except OSError:
        raise DistributedInitError(
            f"the coordinator host {host!r} of --coordinator_address={address} does not resolve "
            f"on this machine; pass the name or IP address of the machine running process 0."
        ) from None
    if pid == 0:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise DistributedInitError(
                    f"process 0 hosts the coordinator on port {port}, but that port is already "
                    f"in use on this machine; pick another --coordinator_address port (and give "
                    f"the same one to every process).") from None
        finally:
            probe.close()
        return
    deadline = time.time() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=min(5.0, timeout_s)).close()
            return
        except OSError as e:
            if time.time() >= deadline:
                raise DistributedInitError(
                    f"could not reach the coordinator at {address} within {timeout_s:.0f}s as "
                    f"process {pid} of {count} ({e.strerror or e}); check that process 0 runs on "
                    f"that host with the same --coordinator_address, that the port is open "
                    f"between the machines, and that every process got the same "
                    f"--num_processes.") from None
            time.sleep(0.5)


def process_tag() -> str:
    """'[process i/N] ' in multi-process runs, '' otherwise (start/resume/stop lines)."""
    import jax
    n = jax.process_count()
    return f"[process {jax.process_index()}/{n}] " if n > 1 else ""


def peer_failure_message(error: BaseException) -> Optional[str]:
    """One sentence when ``error`` says another process died or vanished, else None."""
    import jax
    if jax.process_count() <= 1:
        return None
    text = str(error)
    markers = ("Connection reset", "Connection closed", "connection closed", "Broken pipe",
               "heartbeat", "Heartbeat", "UNAVAILABLE", "task died", "DEADLINE_EXCEEDED",
               "Gloo", "gloo", "peer", "Socket closed", "Connection refused", "ABORTED",
               "CANCELLED", "Barrier")
    if not any(m in text for m in markers):
        return None
    return (f"process {jax.process_index()} of {jax.process_count()} stopped because another "
            f"process of the job died or became unreachable ({short_reason(error)}); checkpoints "
            f"already complete are intact, rerun the same command on every process to resume.")


def exit_now(message: str, code: int = 1):
    """Prints ``error: message`` once and leaves at once: atexit hooks (JAX's shutdown
    barrier, orbax's save) would wait for the dead process. First caller wins."""
    if not _EXIT_LOCK.acquire(blocking=False):
        time.sleep(60)  # another thread is printing and exiting
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001
        pass
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(code)
