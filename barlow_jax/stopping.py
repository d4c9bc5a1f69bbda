"""Stopping every process at the same step: ``StopAgreement`` and ``wait_ready``.

A SIGTERM or SIGINT may reach one process, or all of them at different
steps. Every process must still save the same step and leave together, or
one waits forever in orbax's save barrier while another waits in the next
step's collective. Two agreed sources, each checked once per step on every
process:

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

Starting the multi-process runtime, and what happens when a peer dies rather
than being asked to stop, are in ``barlow_jax.distributed``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Optional

LAG = 2  # steps between a flag's all-reduce and its read (the loop keeps 2 steps in flight)
_NOTICE_KEY = "RECEIVED_PREEMPTION_NOTICE"  # XLA preemption_sync_manager.cc's notice key


def _preemption_noticed() -> bool:
    """True once JAX's notifier on any process recorded a preemption notice (SIGTERM)."""
    try:
        from jax._src import distributed as jd
        jd.global_state.client.key_value_try_get(_NOTICE_KEY)  # raises while absent
        return True
    except Exception:  # noqa: BLE001 - NOT_FOUND, or internals that differ: no notice
        return False


def preemption_service_active() -> bool:
    """True when JAX's preemption sync manager runs (multi-process, service enabled)."""
    try:
        from jax._src import distributed as jd
        return jd.global_state.client is not None and \
            jd.global_state.preemption_sync_manager is not None
    except (ImportError, AttributeError):
        return False


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
