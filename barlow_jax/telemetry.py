"""What the training loop tells: logged records, pictures, warnings and the progress line.

``Telemetry.create(...)`` builds it for this process. Process 0 writes
metrics.jsonl, TensorBoard events and (with ``config.wandb.project``)
wandb through one ``metrics.MetricWriter``, and prints; every other process
gets a ``NullWriter`` and prints nothing, so the loop calls it the same way
everywhere. The method decides what is special about it (``Method.
progress_keys``, ``pictures``, ``warnings``, methods/__init__.py).

``RunClock`` measures training time apart from the kNN evaluations: it
gives each logged record ``step_time``/``pairs_per_sec`` and
``knn_time_fraction``, and the ETA.
"""

from __future__ import annotations

import math
import time
from typing import Dict, Mapping, Optional

import jax
import numpy as np

from barlow_jax import metrics as metrics_lib, paths
from barlow_jax.health import NOT_COMPUTED, collapse_warnings


def scalars(metrics: Mapping) -> Dict[str, float]:
    """Host floats of the scalar metrics (pictures such as c_block are left out).

    The health ranks' "not computed" marker (-1, health.py) is dropped:
    a key is absent rather than -1 in metrics.jsonl and the summaries.
    """
    out = {k: float(np.asarray(v)) for k, v in metrics.items() if np.ndim(v) == 0}
    return {k: v for k, v in out.items()
            if not (k in ("embed_eff_rank", "embed_rank_frac") and v == NOT_COMPUTED)}


def remaining_evals(step: int, total: int, eval_every: int, log_every: int) -> int:
    """kNN evaluations still to come after ``step`` (they run at logged multiples)."""
    if eval_every <= 0:
        return 0
    period = math.lcm(eval_every, log_every)
    n = total // period - step // period
    return n + (1 if total % period and step < total else 0)


def _warning_kind(text: str) -> str:
    return text.split("=")[0].split(" is ")[0]


def new_warnings(current, warned: Dict[str, int], step: int):
    """The warnings of ``current`` to print: a kind once, again only after it went away."""
    kinds = {_warning_kind(w) for w in current}
    out = [w for w in current if _warning_kind(w) not in warned]
    for kind in list(warned):
        if kind not in kinds:
            del warned[kind]
    warned.update({k: step for k in kinds if k not in warned})
    return out


class RunClock:
    """Training time, apart from the first (compiling) step and the kNN evaluations."""

    def __init__(self):
        self.mark: Optional[float] = None  # None until the first step finished
        self.mark_step = 0
        self.train_time = 0.0
        self.eval_time = 0.0
        self.evals_done = 0

    @property
    def started(self) -> bool:
        return self.mark is not None

    def start(self, step: int):
        self.mark, self.mark_step = time.time(), step

    def lap(self, step: int, record: Dict, batch_size: int):
        """Adds ``step_time`` and ``pairs_per_sec`` since the last lap to ``record``."""
        now = time.time()
        if self.mark is not None and step > self.mark_step:
            dt = now - self.mark
            self.train_time += dt
            record["step_time"] = dt / (step - self.mark_step)
            record["pairs_per_sec"] = batch_size / record["step_time"]
        self.mark, self.mark_step = now, step

    def evaluated(self, record: Dict):
        """Counts the kNN evaluation in ``record``; its time is not training time."""
        self.eval_time += record["knn_seconds"]
        self.evals_done += 1
        record["knn_time_fraction"] = self.eval_time / max(self.train_time + self.eval_time,
                                                           1e-9)
        self.mark = time.time()


class Telemetry:
    """The loop's one place to report; see the module doc."""

    def __init__(self, writer: metrics_lib.MetricWriter, config, method, *, total_steps: int,
                 steps_per_epoch: int, lead: bool = True):
        self.writer, self.config, self.method = writer, config, method
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.lead = lead
        self.clock = RunClock()
        self.knn_start: Optional[Dict] = None  # the untrained network's kNN, when measured
        self._warned: Dict[str, int] = {}  # warning kind -> the step it was printed

    @classmethod
    def create(cls, config, workdir: str, method, *, total_steps: int,
               steps_per_epoch: int) -> "Telemetry":
        """Process 0: metrics.jsonl + TensorBoard (+ wandb); the others: a NullWriter."""
        lead = jax.process_index() == 0
        if lead:
            writers = [metrics_lib.JsonlWriter(paths.join(workdir, "metrics.jsonl")),
                       metrics_lib.TensorBoardWriter(paths.join(workdir, "tensorboard"))]
            wandb = metrics_lib.WandbWriter.from_config(config, workdir)
            writer = metrics_lib.MultiWriter(writers + ([wandb] if wandb else []))
        else:
            writer = metrics_lib.NullWriter()
        return cls(writer, config, method, total_steps=total_steps,
                   steps_per_epoch=steps_per_epoch, lead=lead)

    def say(self, text: str):
        """A line on process 0's stdout (the other processes stay quiet)."""
        if self.lead:
            print(text, flush=True)

    def knn_at_start(self, record: Dict, write: bool):
        """The untrained network's kNN (step 0): kept for the later lines; logged if new."""
        self.knn_start = record
        if write and record is not None:
            self.writer.write_scalars(0, record)
            self.say(f"kNN at step 0 (untrained network): top-1 {record['knn_top1']:.2f}% "
                     f"top-5 {record['knn_top5']:.2f}% in {record['knn_seconds']:.1f}s")

    def log(self, step: int, record: Dict, metrics: Mapping, *, evaluated: bool):
        """Writes the step's record and pictures; prints warnings, kNN and progress."""
        c = self.config
        self.writer.write_scalars(step, record)
        if evaluated or step % c.checkpoint_every_steps == 0 or step == self.total_steps:
            for picture in self.method.pictures:
                if picture.key in metrics:
                    self.writer.write_image(step, picture.tag,
                                            picture.render(np.asarray(metrics[picture.key])))
        if not self.lead:
            return
        current = collapse_warnings(record, self.method)
        for warning in new_warnings(current, self._warned, step):
            self.say(f"warning at step {step}: {warning} (printed once while it lasts; the "
                     f"values are in metrics.jsonl)")
        if evaluated:
            start = self.knn_start
            self.say(f"kNN at step {step}: top-1 {record['knn_top1']:.2f}% top-5 "
                     f"{record['knn_top5']:.2f}% in {record['knn_seconds']:.1f}s "
                     f"({100 * record['knn_time_fraction']:.1f}% of the run's time so far)"
                     + (f"; untrained network: top-1 {start['knn_top1']:.2f}%"
                        if start else ""))
        metrics_lib.print_progress(self._progress_line(step, record))

    def _progress_line(self, step: int, record: Dict) -> str:
        c, clock = self.config, self.clock
        eta = (self.total_steps - step) * record.get("step_time", float("nan"))
        evals_left = (remaining_evals(step, self.total_steps, c.eval_every_steps,
                                      c.log_every_steps) if c.eval_every_steps > 0 else 0)
        note = ""
        if evals_left and clock.evals_done:  # projected kNN time, from the ones so far
            eta += evals_left * clock.eval_time / clock.evals_done
        elif evals_left:
            note = f" + {evals_left} kNN evaluation(s)"
        return metrics_lib.progress_line(step, self.total_steps, self.steps_per_epoch, record,
                                         eta, self.method.progress_keys) + note

    def close(self):
        self.writer.close()
