"""The training loop: mesh, data, model, optimizer, state; restore; step; log; save.

``train_and_evaluate(config, workdir)`` is what the CLI, notebooks and tests
call. Data flows one way: config -> pipeline -> global batch on the mesh ->
step(state, batch, key) -> new state + metrics -> writers and checkpoints.
"""

from __future__ import annotations

import collections
import json
import time
from typing import Dict

import jax
import jax.numpy as jnp

from barlow_jax import defaults as defaults_lib
from barlow_jax import (accelerator, checkpointing, distributed, loss_scale,
                        metrics as metrics_lib, online_probe, parallel, paths, profiling,
                        stopping)
from barlow_jax.data import create_pipeline
from barlow_jax.methods import get_method
from barlow_jax.models import build_ssl_net, compute_dtype, compute_dtype_name, parse_widths
from barlow_jax.optim import build_optimizer
from barlow_jax.state import TrainState
from barlow_jax.telemetry import Telemetry, scalars
from barlow_jax.steps import build_train_step


MAX_IN_FLIGHT = 2  # steps dispatched ahead of the one the host waits for


class TrainingDiverged(RuntimeError):
    """Raised when a loss or metric becomes NaN or Inf; the message says what to do."""


def prepare_workdir(workdir: str):
    """Creates ``workdir`` (local or gs://...) or says in one sentence why it cannot be written.

    Every process probes with its own file name (unique across hosts and pids).
    """
    try:
        paths.makedirs(workdir)
        probe = paths.join(workdir, f".write_test.{paths.unique_suffix()}")
        paths.write_text(probe, "ok")
        paths.remove(probe)
    except OSError as e:
        raise PermissionError(f"Cannot write to workdir {workdir!r} ({e.strerror or e}); pass "
                              f"--workdir=DIR with a directory you can write to.") from None


def check_config(config, method):
    """Refuses settings that cannot describe a run, in one sentence naming the fix."""
    compute_dtype(config)
    if method.needs_predictor and not parse_widths(config.predictor.spec):
        raise ValueError(f"config.method={config.method!r} needs a predictor; set "
                         f"config.predictor.spec, e.g. '4096-256'.")
    positive = {"batch_size": "image pairs, e.g. 256", "log_every_steps": "steps",
                "checkpoint_every_steps": "steps", "keep_checkpoints": "checkpoints to keep",
                "data.image_size": "pixels, e.g. 224"}
    for key, unit in positive.items():
        value = config[key] if "." not in key else config.data[key.split(".", 1)[1]]
        if not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"config.{key}={value} must be a positive number of {unit}.")
    if config.eval_every_steps < 0:
        raise ValueError(f"config.eval_every_steps={config.eval_every_steps} must be 0 (no kNN "
                         f"monitor) or a positive number of steps.")
    if config.num_train_steps == 0 or config.num_train_steps < -1:
        raise ValueError(f"config.num_train_steps={config.num_train_steps} must be a positive "
                         f"number of steps, or -1 to train for config.num_epochs.")
    if config.num_train_steps == -1 and not config.num_epochs > 0:
        raise ValueError(f"config.num_epochs={config.num_epochs} must be positive (or set "
                         f"config.num_train_steps to a positive number of steps).")


def check_resume_compatible(workdir: str, config):
    """Refuses to resume under a config that computes differently; returns what changed.

    Only the keys of ``checkpointing.RESUMABLE_KEYS`` (learning rates, compute dtype,
    run length, cadences, paths) may differ; the others are listed in the error.
    Returns ``[(key, saved, now)]`` of the resumable keys that changed.
    """
    path = paths.join(workdir, checkpointing.CONFIG_FILE)
    if not paths.exists(path):
        return []
    saved = json.loads(paths.read_text(path))
    current = checkpointing.config_to_dict(config)
    # The declared defaults: keys newer than the checkpoint are compatible at their default.
    defaults = checkpointing.config_to_dict(defaults_lib.get_config())
    diffs = checkpointing.config_differences(saved, current, defaults)
    if diffs:
        shown = "; ".join(f"{k}: {a!r} in the checkpoint vs {b!r} now" for k, a, b in diffs[:6])
        more = f" (and {len(diffs) - 6} more)" if len(diffs) > 6 else ""
        raise ValueError(f"The workdir {workdir!r} holds a checkpoint from a different config "
                         f"({shown}{more}); these keys cannot change on resume (only learning "
                         f"rates, compute_dtype, run length, logging/eval/checkpoint cadence "
                         f"and paths can, see docs/faults.md): use a new --workdir, or rerun "
                         f"with the saved values to resume.")
    return checkpointing.config_differences(saved, current, defaults, resumable=True)


write_config = checkpointing.write_config  # process 0 only (one writer per shared file)


def total_train_steps(config, steps_per_epoch: int) -> int:
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    return int(config.num_epochs * steps_per_epoch)


def init_state(config, method, tx, mesh, sample_shape, probe_tx=None) -> TrainState:
    """Parameters created directly replicated on the mesh, from config.seed."""
    model = build_ssl_net(config, axis_name=None)
    init_key = jax.random.fold_in(jax.random.key(config.seed), 0x5EED)

    def init():
        variables = model.init(init_key, jnp.zeros(sample_shape, jnp.float32), train=False)
        params, batch_stats = variables["params"], variables.get("batch_stats", {})
        target = None
        if method.ema_target:
            src_p, src_s = params, batch_stats
            if config.loss.get("target_init", "copy") == "independent":
                # deepmind byol_experiment.py: the target from its own rng_target.
                tv = model.init(jax.random.fold_in(init_key, 1),
                                jnp.zeros(sample_shape, jnp.float32), train=False)
                src_p, src_s = tv["params"], tv.get("batch_stats", {})
            elif config.loss.get("target_init", "copy") != "copy":
                raise ValueError(f"config.loss.target_init={config.loss.target_init!r} is not "
                                 f"supported; use 'copy' or 'independent'.")
            target = {"params": {k: v for k, v in src_p.items() if k != "predictor"},
                      "batch_stats": {k: v for k, v in src_s.items() if k != "predictor"}}
        probe = None
        if probe_tx is not None:  # online linear probe on the pooled features
            feats = model.apply(variables, jnp.zeros(sample_shape, jnp.float32), train=False)
            probe = online_probe.init_probe(config, feats["features"].shape[-1], probe_tx)
        return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                          batch_stats=batch_stats, opt_state=tx.init(params), target=target,
                          probe=probe, loss_scale=loss_scale.init(config))

    return jax.jit(init, out_shardings=parallel.replicated(mesh))()


def _check_finite(fetched, steps, ckpt, config):
    """Raises TrainingDiverged at the first step whose metrics are NaN/Inf (float16: a
    skipped step is benign)."""
    for s, m in zip(steps, fetched):
        record = scalars(m)
        bad = metrics_lib.nonfinite_keys(record)
        if bad and not loss_scale.skip_is_benign(record):
            good = ckpt.latest_step()
            where = (f"the last good checkpoint is step {good} in {ckpt.directory}"
                     if good is not None else "no checkpoint was written before it")
            raise TrainingDiverged(
                f"Training stopped at step {s}: {', '.join(sorted(bad))} became NaN/Inf; "
                f"{where}. Rerun the same command with a lower learning rate (e.g. "
                f"--config.optimizer.lr_weights={config.optimizer.lr_weights / 2:g}) or "
                f"with --config.compute_dtype=float32 to resume from it (both may change "
                f"on resume; see docs/faults.md).")


def _finished(workdir, start_step, total_steps, tag) -> Dict:
    """The run is already complete: says how to extend it; returns its last record."""
    print(f"{tag}The run in {workdir} is complete: its checkpoint is at step {start_step} and "
          f"the config asks for {total_steps} steps; to train further, rerun with a larger "
          f"total, e.g. --config.num_train_steps={max(start_step, total_steps) * 2} (the "
          f"learning-rate schedule is then recomputed for the new total).", flush=True)
    jsonl_path = paths.join(workdir, "metrics.jsonl")
    records = metrics_lib.read_jsonl(jsonl_path) if paths.exists(jsonl_path) else []
    return records[-1] if records else {}


def _start_or_resume(config, workdir, ckpt, state, start_step, changed, tag):
    """Writes config.json (process 0), or restores ``start_step`` and trims metrics.jsonl."""
    is_lead = jax.process_index() == 0
    distributed.barrier("config read")  # every process read config.json before it changes
    if changed and is_lead:
        print("Resuming with changed settings: " + "; ".join(
            f"{k} {a!r} -> {b!r}" for k, a, b in changed if k != "data.arrays"), flush=True)
        write_config(workdir, config)  # the next resume compares against these values
    if not start_step:
        if is_lead:
            write_config(workdir, config)
        return state
    state = loss_scale.restore(ckpt.restore, state, start_step)  # onto this mesh
    moved = (metrics_lib.truncate_after(paths.join(workdir, "metrics.jsonl"), start_step)
             if is_lead else 0)
    print(f"{tag}Resumed from {ckpt.directory}/{start_step}"
          + (f" ({moved} log lines past it moved to metrics.jsonl.discarded)" if moved else ""),
          flush=True)
    return state


def _knn_baseline(config, knn, state, workdir, start_step, telemetry):
    """config.eval.knn_at_start: the untrained network's kNN (logged once, found on resume)."""
    if knn is None or not config.eval.get("knn_at_start", False):
        return
    if start_step:
        log_path = paths.join(workdir, "metrics.jsonl")
        records = metrics_lib.read_jsonl(log_path) if paths.exists(log_path) else []
        telemetry.knn_at_start(next((r for r in records if r.get("step") == 0
                                     and "knn_top1" in r), None), write=False)
    else:
        telemetry.knn_at_start(dict(knn.evaluate(state.variables()), step=0, epoch=0.0),
                               write=True)


def train_and_evaluate(config, workdir: str, *, mesh=None) -> Dict:
    """Trains (or resumes) the run in ``workdir``; returns the last logged record.

    Stops cleanly on SIGTERM/SIGINT after saving the current step. Raises
    TrainingDiverged on a NaN/Inf loss without overwriting good checkpoints.

    Args:
      config: the experiment config (``barlow_jax/defaults.py`` declares its keys).
      workdir: run directory (local path or ``gs://``); created, or resumed from.
      mesh: the 1-D ``data`` mesh to train on; default every device of every
        process (``parallel.make_mesh()``). A smaller mesh (e.g. one device of
        a notebook's or a test's several) trains on those devices only.

    Returns:
      The last logged metrics record (``{}`` when nothing was logged).
    """
    # Settings, mesh and workdir: refused early, in one sentence each.
    method = get_method(config.method)
    check_config(config, method)
    mesh = parallel.make_mesh() if mesh is None else mesh
    if jax.process_index() == 0:
        accelerator.check_backend()  # one sentence when JAX misses this machine's GPU/TPU
    parallel.check_batch_size(config.batch_size, mesh)
    prepare_workdir(workdir)
    ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)
    start_step = ckpt.latest_step() or 0
    changed = check_resume_compatible(workdir, config) if start_step else []
    tag = distributed.process_tag()

    # Data, schedule, state.
    pipeline = create_pipeline(config.data, global_batch_size=config.batch_size,
                               seed=config.seed, mesh=mesh, start_step=start_step)
    steps_per_epoch = pipeline.steps_per_epoch
    total_steps = total_train_steps(config, steps_per_epoch)
    tx, schedules = build_optimizer(config.optimizer, batch_size=config.batch_size,
                                    steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    if start_step >= total_steps:
        ckpt.close()
        pipeline.close()
        return _finished(workdir, start_step, total_steps, tag)
    probe_tx = None
    if online_probe.enabled(config):
        online_probe.check_training_labels(config)
        probe_tx = online_probe.probe_tx(config.online_probe)
    size = config.data.image_size
    state = init_state(config, method, tx, mesh, (2, size, size, 3), probe_tx)
    state = _start_or_resume(config, workdir, ckpt, state, start_step, changed, tag)

    # The step, the kNN monitor, the telemetry (process 0 writes, the others drop).
    step_fn = build_train_step(config, mesh, method=method, tx=tx,
                               make_views=pipeline.make_views, total_steps=total_steps,
                               probe_tx=probe_tx)
    seed_key = parallel.replicate(jax.random.key_data(jax.random.key(config.seed)), mesh)
    knn = None
    if config.eval_every_steps > 0:
        from barlow_jax.eval.knn import KnnMonitor
        knn = KnnMonitor(config, mesh)
    telemetry = Telemetry.create(config, workdir, method, total_steps=total_steps,
                                 steps_per_epoch=steps_per_epoch)
    processes = (f", {jax.process_count()} processes x {jax.local_device_count()}"
                 if jax.process_count() > 1 else "")
    print(f"{tag}Training {config.method} on {mesh.devices.size} device(s) "
          f"({jax.devices()[0].platform}{processes}, {compute_dtype_name(config)}): "
          f"{total_steps} steps of {config.batch_size} pairs, {steps_per_epoch} steps/epoch, "
          f"from step {start_step}; workdir {workdir}", flush=True)
    _knn_baseline(config, knn, state, workdir, start_step, telemetry)

    # The loop: step; at log/checkpoint/stop steps, fetch, check, log, save.
    step = start_step
    pending = []            # (step, device metrics) not yet fetched
    last_record: Dict = {}
    clock = telemetry.clock  # timing excludes the first (compiling) step and kNN evaluations
    profiler = profiling.StepProfiler(config.get("profile_steps", ""),
                                      paths.join(workdir, "profile"), first_step=start_step)
    t_start = time.time()
    in_flight = collections.deque()  # losses of dispatched, maybe unfinished steps
    peer_lost = False
    try:
        with stopping.StopAgreement(mesh, tag=tag) as stop:
            while step < total_steps:
                profiler.before(step)
                batch = next(pipeline)
                state, m = step_fn(state, batch, pipeline.device_data, seed_key)
                step += 1
                profiler.after(step, m)
                pending.append((step, m))
                # Dispatch is asynchronous: without a bound the loop runs hundreds of
                # steps ahead of a slow device, holding their batches in memory, and a
                # SIGTERM then waits for all of them. Keep at most MAX_IN_FLIGHT queued.
                in_flight.append(m["loss"])
                if len(in_flight) > MAX_IN_FLIGHT:
                    stopping.wait_ready(in_flight.popleft())
                if not clock.started:
                    stopping.wait_ready(m)
                    clock.start(step)
                    telemetry.say(f"step {step} done in {clock.mark - t_start:.1f}s (compilation "
                                  f"included); next progress line at a multiple of "
                                  f"{config.log_every_steps}")
                # The same answer on every process at this step (stopping.StopAgreement).
                stop_reason = stop.check(step)
                log_now = step % config.log_every_steps == 0 or step == total_steps
                save_now = step % config.checkpoint_every_steps == 0 or step == total_steps
                if log_now or save_now or stop_reason:
                    fetched = jax.device_get(stopping.wait_ready([m for _, m in pending]))
                    _check_finite(fetched, [s for s, _ in pending], ckpt, config)
                    pending.clear()
                    if log_now or stop_reason:
                        record = scalars(fetched[-1])
                        record.update(step=step, epoch=step / steps_per_epoch)
                        for name, sched in schedules.items():
                            record[name] = float(sched(step - 1))  # the rate of this update
                        clock.lap(step, record, config.batch_size)
                        record.update(pipeline.stats())
                        evaluated = knn is not None and (step % config.eval_every_steps == 0
                                                         or step == total_steps)
                        if evaluated:
                            record.update(knn.evaluate(state.variables(), probe=state.probe))
                            clock.evaluated(record)
                        telemetry.log(step, record, fetched[-1], evaluated=evaluated)
                        last_record = record
                if save_now or stop_reason:
                    ckpt.save(step, state)
                if stop_reason:
                    ckpt.wait()
                    after = (f" ({time.time() - stop.received_at:.1f}s after the signal)"
                             if stop.received_at else "")
                    print(f"{tag}Received {stop_reason}: saved step {step} to {ckpt.directory}"
                          f"{after}; rerun the same command to resume.", flush=True)
                    break
    except Exception as e:  # noqa: BLE001 - only a lost peer is translated
        message = distributed.peer_failure_message(e)
        if message is None:
            raise
        peer_lost = True
        raise distributed.PeerLost(message) from e
    finally:
        profiler.close()
        if not peer_lost:  # closing waits for the save barrier, which a dead peer never joins
            ckpt.close()
        pipeline.close()
        telemetry.close()
    return last_record
