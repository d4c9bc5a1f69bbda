"""The training loop: mesh, data, model, optimizer, state; restore; step; log; save.

``train_and_evaluate(config, workdir)`` is what the CLI, notebooks and tests
call. Data flows one way: config -> pipeline -> global batch on the mesh ->
step(state, batch, key) -> new state + metrics -> writers and checkpoints.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import time
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from barlow_jax import checkpointing, metrics as metrics_lib, parallel
from barlow_jax.data import create_pipeline
from barlow_jax.eval.health import collapse_warnings
from barlow_jax.methods import get_method
from barlow_jax.models import build_ssl_net, compute_dtype, parse_widths
from barlow_jax.optim import build_optimizer
from barlow_jax.report import c_matrix_image
from barlow_jax.state import TrainState
from barlow_jax.steps import make_train_step


MAX_IN_FLIGHT = 2  # steps dispatched ahead of the one the host waits for


class TrainingDiverged(RuntimeError):
    """Raised when a loss or metric becomes NaN or Inf; the message says what to do."""


class _StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

    def __init__(self):
        self.received = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no signal handling there
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def prepare_workdir(workdir: str):
    """Creates ``workdir`` or says in one sentence why it cannot be written."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"Cannot write to workdir {workdir!r} ({e.strerror}); pass "
                              f"--workdir=DIR with a directory you can write to.") from None


def check_config(config, method):
    compute_dtype(config)
    if method.needs_predictor and not parse_widths(config.predictor.spec):
        raise ValueError(f"config.method={config.method!r} needs a predictor; set "
                         f"config.predictor.spec, e.g. '4096-256'.")
    for key in ("log_every_steps", "checkpoint_every_steps"):
        if config[key] <= 0:
            raise ValueError(f"config.{key}={config[key]} must be a positive number of steps.")


def check_resume_compatible(workdir: str, config):
    """Refuses to resume a checkpoint written under a config that computes differently."""
    path = os.path.join(workdir, checkpointing.CONFIG_FILE)
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    from configs import base  # the declared defaults: keys newer than the checkpoint
    diffs = checkpointing.config_differences(saved, checkpointing.config_to_dict(config),
                                             checkpointing.config_to_dict(base.get_config()))
    if diffs:
        shown = "; ".join(f"{k}: {a!r} in the checkpoint vs {b!r} now" for k, a, b in diffs[:6])
        more = f" (and {len(diffs) - 6} more)" if len(diffs) > 6 else ""
        raise ValueError(f"The workdir {workdir!r} holds a checkpoint from a different config "
                         f"({shown}{more}); use a new --workdir, or rerun with the saved "
                         f"values to resume.")


def write_config(workdir: str, config):
    path = os.path.join(workdir, checkpointing.CONFIG_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(checkpointing.config_to_dict(config), f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def total_train_steps(config, steps_per_epoch: int) -> int:
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    return int(config.num_epochs * steps_per_epoch)


def init_state(config, method, tx, mesh, sample_shape) -> TrainState:
    """Parameters created directly replicated on the mesh, from config.seed."""
    model = build_ssl_net(config, axis_name=None)
    init_key = jax.random.fold_in(jax.random.key(config.seed), 0x5EED)

    def init():
        variables = model.init(init_key, jnp.zeros(sample_shape, jnp.float32), train=False)
        params, batch_stats = variables["params"], variables.get("batch_stats", {})
        target = None
        if method.ema_target:
            target = {"params": {k: v for k, v in params.items() if k != "predictor"},
                      "batch_stats": {k: v for k, v in batch_stats.items() if k != "predictor"}}
        return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                          batch_stats=batch_stats, opt_state=tx.init(params), target=target)

    return jax.jit(init, out_shardings=parallel.replicated(mesh))()


def _ema_schedule(config, total_steps):
    from barlow_jax.methods.ema import ema_decay
    return lambda step: ema_decay(step, total_steps, base=config.loss.ema_start,
                                  end=config.loss.ema_end)


def _health_fn():
    from barlow_jax.eval.health import embedding_health
    return embedding_health


def _scalars(metrics) -> Dict[str, float]:
    """Host floats of the scalar metrics (pictures such as c_block are left out)."""
    return {k: float(np.asarray(v)) for k, v in metrics.items() if np.ndim(v) == 0}


def train_and_evaluate(config, workdir: str) -> Dict:
    """Trains (or resumes) the run in ``workdir``; returns the last logged record.

    Stops cleanly on SIGTERM/SIGINT after saving the current step. Raises
    TrainingDiverged on a NaN/Inf loss without overwriting good checkpoints.
    """
    method = get_method(config.method)
    check_config(config, method)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    prepare_workdir(workdir)
    ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)
    start_step = ckpt.latest_step() or 0
    if start_step:
        check_resume_compatible(workdir, config)

    pipeline = create_pipeline(config.data, global_batch_size=config.batch_size,
                               seed=config.seed, mesh=mesh, start_step=start_step)
    steps_per_epoch = pipeline.steps_per_epoch
    total_steps = total_train_steps(config, steps_per_epoch)
    tx, schedules = build_optimizer(config.optimizer, batch_size=config.batch_size,
                                    steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    size = config.data.image_size
    state = init_state(config, method, tx, mesh, (2, size, size, 3))
    if start_step:
        state = ckpt.restore(state, start_step)
        moved = metrics_lib.truncate_after(os.path.join(workdir, "metrics.jsonl"), start_step)
        print(f"Resumed from {ckpt.directory}/{start_step}"
              + (f" ({moved} log lines past it moved to metrics.jsonl.discarded)" if moved else ""),
              flush=True)
    else:
        write_config(workdir, config)

    model = build_ssl_net(config, axis_name=parallel.AXIS)
    target_model = (build_ssl_net(config, axis_name=parallel.AXIS, with_predictor=False)
                    if method.ema_target else None)
    step_fn = make_train_step(
        mesh, model=model, target_model=target_model, method=method, tx=tx,
        make_views=pipeline.make_views, loss_config=config.loss,
        ema_tau=_ema_schedule(config, total_steps) if method.ema_target else None,
        health=_health_fn(), log_every_steps=config.log_every_steps)
    seed_key = parallel.replicate(jax.random.key_data(jax.random.key(config.seed)), mesh)
    knn = None
    if config.eval_every_steps > 0:
        from barlow_jax.eval.knn import KnnMonitor
        knn = KnnMonitor(config, mesh)

    is_lead = jax.process_index() == 0
    jsonl = metrics_lib.JsonlWriter(os.path.join(workdir, "metrics.jsonl")) if is_lead else None
    tb = metrics_lib.TensorBoardWriter(os.path.join(workdir, "tensorboard")) if is_lead else None
    if is_lead:
        print(f"Training {config.method} on {mesh.devices.size} device(s) "
              f"({jax.devices()[0].platform}): {total_steps} steps of {config.batch_size} "
              f"pairs, {steps_per_epoch} steps/epoch, from step {start_step}; workdir {workdir}",
              flush=True)

    step = start_step
    pending = []            # (step, device metrics) not yet fetched
    last_record: Dict = {}
    t_mark, steps_mark = None, 0   # timing excludes the first (compiling) step
    train_time = 0.0
    eval_time = [0.0]

    def flush(step_now: int, log: bool):
        nonlocal t_mark, steps_mark, last_record, train_time
        fetched = jax.device_get([m for _, m in pending])
        steps = [s for s, _ in pending]
        pending.clear()
        for s, m in zip(steps, fetched):
            record = _scalars(m)
            bad = metrics_lib.nonfinite_keys(record)
            if bad:
                good = ckpt.latest_step()
                where = (f"the last good checkpoint is step {good} in {ckpt.directory}"
                         if good is not None else "no checkpoint was written before it")
                raise TrainingDiverged(
                    f"Training stopped at step {s}: {', '.join(sorted(bad))} became NaN/Inf; "
                    f"{where}. Lower config.optimizer.lr_weights or use "
                    f"--config.compute_dtype=float32, then rerun to resume from it.")
        if not log or not steps:
            return
        now = time.time()
        record = _scalars(fetched[-1])
        record["step"] = step_now
        record["epoch"] = step_now / steps_per_epoch
        for name, sched in schedules.items():
            record[name] = float(sched(step_now - 1))  # the rate used by this update
        if t_mark is not None and step_now > steps_mark:
            dt = now - t_mark
            train_time += dt
            record["step_time"] = dt / (step_now - steps_mark)
            record["pairs_per_sec"] = config.batch_size / record["step_time"]
        t_mark, steps_mark = now, step_now
        record.update(pipeline.stats())
        evaluated = knn is not None and (step_now % config.eval_every_steps == 0
                                         or step_now == total_steps)
        if evaluated:
            record.update(knn.evaluate(state.variables()))
            eval_time[0] += record["knn_seconds"]
            record["knn_time_fraction"] = eval_time[0] / max(train_time + eval_time[0], 1e-9)
            t_mark = time.time()  # evaluation time is not training time
        last_record = record
        if is_lead:
            jsonl.write(record)
            tb.scalars(step_now, record)
            c = fetched[-1].get("c_block")
            if c is not None and (evaluated or step_now % config.checkpoint_every_steps == 0
                                  or step_now == total_steps):
                tb.image(step_now, "cross_correlation_vs_identity", c_matrix_image(np.asarray(c)))
            for warning in collapse_warnings(record):
                print(f"warning at step {step_now}: {warning}", flush=True)
            if evaluated:
                print(f"kNN at step {step_now}: top-1 {record['knn_top1']:.2f}% top-5 "
                      f"{record['knn_top5']:.2f}% in {record['knn_seconds']:.1f}s "
                      f"({100 * record['knn_time_fraction']:.1f}% of the run's time so far)",
                      flush=True)
            eta = (total_steps - step_now) * record.get("step_time", float("nan"))
            metrics_lib.print_progress(metrics_lib.progress_line(
                step_now, total_steps, steps_per_epoch, record, eta))

    t_start = time.time()
    in_flight = collections.deque()  # losses of dispatched, maybe unfinished steps
    try:
        with _StopSignal() as stop:
            while step < total_steps:
                batch = next(pipeline)
                state, m = step_fn(state, batch, pipeline.device_data, seed_key)
                step += 1
                pending.append((step, m))
                # Dispatch is asynchronous: without a bound the loop runs hundreds of
                # steps ahead of a slow device, holding their batches in memory, and a
                # SIGTERM then waits for all of them. Keep at most MAX_IN_FLIGHT queued.
                in_flight.append(m["loss"])
                if len(in_flight) > MAX_IN_FLIGHT:
                    jax.block_until_ready(in_flight.popleft())
                if t_mark is None:
                    jax.block_until_ready(m)
                    t_mark, steps_mark = time.time(), step
                    if is_lead:
                        print(f"step {step} done in {t_mark - t_start:.1f}s (compilation included); "
                              f"next progress line at a multiple of {config.log_every_steps}",
                              flush=True)
                log_now = step % config.log_every_steps == 0 or step == total_steps
                save_now = step % config.checkpoint_every_steps == 0 or step == total_steps
                if log_now or save_now or stop.received:
                    flush(step, log=log_now or bool(stop.received))
                if save_now or stop.received:
                    ckpt.save(step, state)
                if stop.received:
                    ckpt.wait()
                    print(f"Received {stop.received}: saved step {step} to {ckpt.directory}; "
                          f"rerun the same command to resume.", flush=True)
                    break
    finally:
        ckpt.close()
        pipeline.close()
        if jsonl is not None:
            jsonl.close()
            tb.close()
    return last_record
