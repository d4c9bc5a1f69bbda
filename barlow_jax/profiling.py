"""A ``jax.profiler`` trace of a few training steps: ``profile_steps='START:STOP'``.

The trace covers the updates that take the step counter from START to STOP
(``10:15``: the five steps after the tenth, i.e. steps 11-15 of the progress
line): ``jax.profiler.start_trace`` before step START+1 is dispatched,
``stop_trace`` once step STOP has finished on the device. It is written as
``<logdir>/plugins/profile/<run>/<host>.xplane.pb``, the layout TensorBoard's
profile plugin (``pip install tensorboard tensorboard-plugin-profile``;
``tensorboard --logdir <logdir>``) and xprof open. Skip the first step (it
compiles) unless compilation is what you want to see.

The trainer writes to ``<workdir>/profile`` (``--config.profile_steps=10:15``),
the benchmark to ``--profile_dir`` (``--profile_steps=2:5``).
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import jax


def parse_steps(spec: str) -> Optional[Tuple[int, int]]:
    """'START:STOP' -> (START, STOP) with 0 <= START < STOP; '' -> None."""
    spec = (spec or "").strip()
    if not spec:
        return None
    try:
        start, stop = (int(x) for x in spec.split(":"))
    except ValueError:
        start, stop = -1, -1
    if not 0 <= start < stop:
        raise ValueError(f"profile_steps={spec!r} is not START:STOP with 0 <= START < STOP; "
                         f"write e.g. --config.profile_steps=10:15 (the 5 steps after the 10th).")
    return start, stop


class StepProfiler:
    """Call ``before(step)`` with the steps done before dispatching the next one and
    ``after(step, outputs)`` with the steps done after it; ``close()`` at the end."""

    def __init__(self, spec: str, logdir: str, *, first_step: int = 0, log=print):
        self.range = parse_steps(spec)
        self.logdir = logdir
        self.log = log
        self.active = False
        self.written = None
        if self.range and self.range[0] < first_step:
            log(f"profile_steps={spec}: the run resumes at step {first_step}, past START; "
                f"no trace is written.")
            self.range = None

    def before(self, step: int) -> None:
        if self.range and not self.active and step == self.range[0]:
            from barlow_jax import paths  # the workdir may be gs://... (etils.epath)
            paths.makedirs(self.logdir)
            jax.profiler.start_trace(self.logdir)
            self.active = True

    def after(self, step: int, outputs=None) -> None:
        if self.active and step >= self.range[1]:
            self._stop(outputs)

    def _stop(self, outputs=None) -> None:
        if outputs is not None:
            jax.block_until_ready(outputs)
        jax.profiler.stop_trace()
        self.active = False
        self.written = self.logdir
        start, stop = self.range
        self.log(f"Profiler trace of steps {start + 1}-{stop} written under {self.logdir} "
                 f"(tensorboard --logdir {self.logdir}, Profile tab).")

    def close(self) -> None:
        """Stops a trace still running (the run ended or stopped before STOP)."""
        if self.active:
            self._stop()


def trace_files(logdir: str):
    """The ``*.xplane.pb`` files under ``logdir``."""
    out = []
    for d, _, files in os.walk(logdir):
        out += [os.path.join(d, f) for f in files if f.endswith(".xplane.pb")]
    return sorted(out)
