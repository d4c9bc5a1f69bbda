"""The multi-process runtime: starting it, and stopping every process at the same step.

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

Stopping (``StopAgreement``): a SIGTERM or SIGINT may reach one process, or all
of them at different steps. Every process must still save the same step and
leave together, or one waits forever in orbax's save barrier while another
waits in the next step's collective. Two agreed sources, each checked once per
step on every process:

* JAX's preemption service (multi-process runs): ``jax.distributed.initialize``
  installs a SIGTERM notifier; ``multihost_utils.reached_preemption_sync_point``
  turns a notice on any process into one step, the same on all. We leave its
  SIGTERM handler in place (a Python handler would replace it), so cluster
  notices that arrive through it (TPU maintenance events) stop the run too.
* A stop flag all-reduced over the mesh: each process's own flag (SIGINT,
  SIGTERM when the preemption service is off, and the preemption notice that
  JAX's notifier leaves in the coordination service, in case the sync point is
  missed) is max-reduced every step; the result for step k is read at step
  k + ``LAG``, when the loop already waits for step k's loss, so it adds no
  wait to the device pipeline. Every process reads the same value at the same
  step, hence stops at the same step. Whichever source fires first decides;
  each gives the same step everywhere, so their earliest does too.

A dead peer (SIGKILL, lost machine) cannot be agreed with: the survivors' next
collective fails and ``peer_failure_message`` makes that one sentence; where JAX's
runtime itself aborts the process instead (a dead coordinator, missed heartbeats),
``barlow_jax.supervisor`` replaces its C++ report by one sentence.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from typing import Optional

ENV_ADDRESS, ENV_COUNT, ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
LAG = 2  # steps between a flag's all-reduce and its read (the loop keeps 2 steps in flight)


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


_NOTICE_KEY = "RECEIVED_PREEMPTION_NOTICE"  # XLA preemption_sync_manager.cc's notice key


def _preemption_noticed() -> bool:
    """True once JAX's notifier on any process recorded a preemption notice (SIGTERM)."""
    try:
        from jax._src import distributed as jd
        jd.global_state.client.key_value_try_get(_NOTICE_KEY)  # raises while absent
        return True
    except Exception:  # noqa: BLE001 - NOT_FOUND, or internals that differ: no notice
        return False


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


def preemption_service_active() -> bool:
    """True when JAX's preemption sync manager runs (multi-process, service enabled)."""
    try:
        from jax._src import distributed as jd
        return jd.global_state.client is not None and \
            jd.global_state.preemption_sync_manager is not None
    except (ImportError, AttributeError):
        return False


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


class StopAgreement:
    """SIGTERM/SIGINT on any process -> the same stopping step on every process.

    Use as a context manager around the training loop and call
    ``check(step)`` exactly once per step, after dispatching it, on every
    process: it returns the name of the signal to stop for, or None. In a
    single process the local flag is the decision (no collective).
    """

    def __init__(self, mesh=None, tag: str = ""):
        self.mesh = mesh
        self.tag = tag                # printed before the acknowledgement ("[process 1/2] ")
        self.received = None          # the local signal's name
        self.received_at = None       # time.time() of the first local signal
        self.reason = None
        self.noticed = False          # JAX's preemption notice seen in the coordination service
        self._old = {}
        self._pending = []            # (step, reduced device array) not read yet
        self._reduce = None
        self._zero = self._one = None
        self._multi = False
        self._jax_sigterm = False

    # -- signals
    def __enter__(self):
        import jax
        self._multi = jax.process_count() > 1 and self.mesh is not None
        self._jax_sigterm = self._multi and preemption_service_active()
        sigs = [signal.SIGINT] + ([] if self._jax_sigterm else [signal.SIGTERM])
        for sig in sigs:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no signal handling there
                pass
        if self._multi:
            self._setup_reduce()
        return self

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
            self.received_at = time.time()
            self._acknowledge(name)
        else:
            _write_now(f"{self.tag}Received {name} again: already stopping; the save of the "
                       f"step in flight is under way (kill -9 loses only that step).\n")

    def _acknowledge(self, name: str):
        """Says at once that the stop is under way and what it waits for (issue 16)."""
        _write_now(f"{self.tag}Received {name}: no new steps will start; waiting for the "
                   f"step in flight to finish, then saving it (rerun the same command to "
                   f"resume).\n")

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)

    # -- the agreed flag
    def _setup_reduce(self):
        import jax
        import jax.numpy as jnp
        import numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        sharding = NamedSharding(self.mesh, P(self.mesh.axis_names[0]))
        n_local = len(sharding.addressable_devices)
        make = (lambda v: jax.make_array_from_process_local_data(
            sharding, np.full((n_local,), v, np.int32)))
        # Device-resident inputs made once: a step without a local signal uploads nothing.
        self._zero, self._one = make(0), make(1)
        self._reduce = jax.jit(lambda x: jnp.max(x),
                               out_shardings=NamedSharding(self.mesh, P()))

    def check(self, step: int) -> Optional[str]:
        """The agreed decision at ``step`` (same on every process): a signal name or None."""
        if self.reason is not None:
            return self.reason
        if not self._multi:
            self.reason = self.received
            return self.reason
        from jax.experimental import multihost_utils
        if self._jax_sigterm and multihost_utils.reached_preemption_sync_point(step):
            if not self.noticed:
                self._acknowledge("SIGTERM")
            self.noticed = True
            self.reason = "SIGTERM"
            return self.reason
        if self._jax_sigterm and not self.noticed:
            # The sync point is missed if a counter it compares was stale (orbax's finalize
            # thread reports old steps to the same manager); the notice JAX's notifier left
            # in the coordination service also goes through the agreed flag.
            self.noticed = _preemption_noticed()
            if self.noticed:
                self._acknowledge("SIGTERM")
        local = self.received or self.noticed
        self._pending.append((step, self._reduce(self._one if local else self._zero)))
        if len(self._pending) > LAG:
            _, flag = self._pending.pop(0)
            if int(flag) > 0:
                self.reason = self.received or (
                    "SIGTERM" if self.noticed else "a stop signal on another process")
        return self.reason


def _write_now(text: str):
    """Writes to stdout from a signal handler: straight to the file descriptor (print()
    there may re-enter a print the main thread was in), after what Python buffered."""
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - reentrant flush: the line still goes out below
        pass
    try:
        os.write(sys.stdout.fileno(), text.encode("utf-8", "replace"))
    except (OSError, ValueError, AttributeError):
        pass


def wait_ready(x, max_sleep: float = 0.02):
    """``jax.block_until_ready(x)`` that lets Python signal handlers run meanwhile.

    A blocking wait holds the main thread in C++ for a whole step, so a SIGTERM
    handler (the acknowledgement above) would only run after it. Polling
    ``is_ready()`` with short sleeps (0.5 ms growing to ``max_sleep``) keeps the
    host overhead negligible for fast steps and the reaction time under 20 ms.
    """
    import jax
    leaves = [a for a in jax.tree_util.tree_leaves(x) if hasattr(a, "is_ready")]
    pause = 0.0005
    for a in leaves:
        while not a.is_ready():
            time.sleep(pause)
            pause = min(pause * 2, max_sleep)
    return x


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
