"""The training loop: mesh, data, model, optimizer, state; restore; step; log; save.

``train_and_evaluate(config, workdir)`` is what the CLI, notebooks and tests
call. Data flows one way: config -> pipeline -> global batch on the mesh ->
step(state, batch, key) -> new state + metrics -> writers and checkpoints.
"""

from __future__ import annotations

import collections
import json
import math
import time
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from barlow_jax import defaults as defaults_lib
from barlow_jax import (accelerator, checkpointing, distributed, loss_scale,
                        metrics as metrics_lib, online_probe, parallel, paths, profiling)
from barlow_jax.data import create_pipeline
from barlow_jax.eval.health import collapse_warnings
from barlow_jax.methods import get_method
from barlow_jax.models import build_ssl_net, compute_dtype, compute_dtype_name, parse_widths
from barlow_jax.optim import build_optimizer
from barlow_jax.report import c_matrix_image
from barlow_jax.state import TrainState
from barlow_jax.steps import build_train_step, ema_schedule


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


_ema_schedule = ema_schedule  # the old name, kept for callers


def _scalars(metrics) -> Dict[str, float]:
    """Host floats of the scalar metrics (pictures such as c_block are left out).

    The health ranks' "not computed" marker (-1, eval/health.py) is dropped:
    a key is absent rather than -1 in metrics.jsonl and the summaries.
    """
    from barlow_jax.eval.health import NOT_COMPUTED
    out = {k: float(np.asarray(v)) for k, v in metrics.items() if np.ndim(v) == 0}
    return {k: v for k, v in out.items()
            if not (k in ("embed_eff_rank", "embed_rank_frac") and v == NOT_COMPUTED)}


def _remaining_evals(step: int, total: int, eval_every: int, log_every: int) -> int:
    """kNN evaluations still to come after ``step`` (they run at logged multiples)."""
    if eval_every <= 0:
        return 0
    period = math.lcm(eval_every, log_every)
    n = total // period - step // period
    return n + (1 if total % period and step < total else 0)


def _warning_kind(text: str) -> str:
    return text.split("=")[0].split(" is ")[0]


def _new_warnings(current, warned: Dict[str, int], step: int):
    """The warnings of ``current`` to print: a kind once, again only after it went away."""
    kinds = {_warning_kind(w) for w in current}
    out = [w for w in current if _warning_kind(w) not in warned]
    for kind in list(warned):
        if kind not in kinds:
            del warned[kind]
    warned.update({k: step for k in kinds if k not in warned})
    return out


def train_and_evaluate(config, workdir: str) -> Dict:
    """Trains (or resumes) the run in ``workdir``; returns the last logged record.

    Stops cleanly on SIGTERM/SIGINT after saving the current step. Raises
    TrainingDiverged on a NaN/Inf loss without overwriting good checkpoints.
    """
    method = get_method(config.method)
    check_config(config, method)
    mesh = parallel.make_mesh()
    if jax.process_index() == 0:
        accelerator.check_backend()  # one sentence when JAX misses this machine's GPU/TPU
    parallel.check_batch_size(config.batch_size, mesh)
    prepare_workdir(workdir)
    ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)
    start_step = ckpt.latest_step() or 0
    changed = check_resume_compatible(workdir, config) if start_step else []

    pipeline = create_pipeline(config.data, global_batch_size=config.batch_size,
                               seed=config.seed, mesh=mesh, start_step=start_step)
    steps_per_epoch = pipeline.steps_per_epoch
    total_steps = total_train_steps(config, steps_per_epoch)
    tx, schedules = build_optimizer(config.optimizer, batch_size=config.batch_size,
                                    steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    tag = distributed.process_tag()
    is_lead = jax.process_index() == 0
    if start_step >= total_steps:
        ckpt.close()
        pipeline.close()
        print(f"{tag}The run in {workdir} is complete: its checkpoint is at step {start_step} and "
              f"the config asks for {total_steps} steps; to train further, rerun with a larger "
              f"total, e.g. --config.num_train_steps={max(start_step, total_steps) * 2} (the "
              f"learning-rate schedule is then recomputed for the new total).", flush=True)
        jsonl_path = paths.join(workdir, "metrics.jsonl")
        records = metrics_lib.read_jsonl(jsonl_path) if paths.exists(jsonl_path) else []
        return records[-1] if records else {}
    size = config.data.image_size
    probe_tx = None
    if online_probe.enabled(config):
        online_probe.check_training_labels(config)
        probe_tx = online_probe.probe_tx(config.online_probe)
    state = init_state(config, method, tx, mesh, (2, size, size, 3), probe_tx)
    distributed.barrier("config read")  # every process read config.json before it changes
    if changed and is_lead:
        print("Resuming with changed settings: " + "; ".join(
            f"{k} {a!r} -> {b!r}" for k, a, b in changed if k != "data.arrays"), flush=True)
        write_config(workdir, config)  # the next resume compares against these values
    if start_step:
        state = loss_scale.restore(ckpt.restore, state, start_step)  # onto this mesh
        moved = (metrics_lib.truncate_after(paths.join(workdir, "metrics.jsonl"), start_step)
                 if is_lead else 0)
        print(f"{tag}Resumed from {ckpt.directory}/{start_step}"
              + (f" ({moved} log lines past it moved to metrics.jsonl.discarded)" if moved else ""),
              flush=True)
    elif is_lead:
        write_config(workdir, config)

    step_fn = build_train_step(config, mesh, method=method, tx=tx,
                               make_views=pipeline.make_views, total_steps=total_steps,
                               probe_tx=probe_tx)
    seed_key = parallel.replicate(jax.random.key_data(jax.random.key(config.seed)), mesh)
    knn = None
    if config.eval_every_steps > 0:
        from barlow_jax.eval.knn import KnnMonitor
        knn = KnnMonitor(config, mesh)

    # One writer per shared file: only process 0 logs (metrics.jsonl, TensorBoard, wandb).
    jsonl = metrics_lib.JsonlWriter(paths.join(workdir, "metrics.jsonl")) if is_lead else None
    tb = metrics_lib.TensorBoardWriter(paths.join(workdir, "tensorboard")) if is_lead else None
    wb = metrics_lib.WandbWriter.from_config(config, workdir) if is_lead else None  # or None
    processes = (f", {jax.process_count()} processes x {jax.local_device_count()}"
                 if jax.process_count() > 1 else "")
    print(f"{tag}Training {config.method} on {mesh.devices.size} device(s) "
          f"({jax.devices()[0].platform}{processes}, {compute_dtype_name(config)}): "
          f"{total_steps} steps of {config.batch_size} pairs, {steps_per_epoch} steps/epoch, "
          f"from step {start_step}; workdir {workdir}", flush=True)
    knn_start = None  # config.eval.knn_at_start: the untrained network's kNN, the baseline
    log_path = paths.join(workdir, "metrics.jsonl")
    if knn is not None and start_step and config.eval.get("knn_at_start", False):
        knn_start = next((r for r in (metrics_lib.read_jsonl(log_path) if paths.exists(
            log_path) else []) if r.get("step") == 0 and "knn_top1" in r), None)
    elif knn is not None and config.eval.get("knn_at_start", False):
        knn_start = dict(knn.evaluate(state.variables()), step=0, epoch=0.0)
        if is_lead:
            jsonl.write(knn_start)
            tb.scalars(0, knn_start)
            print(f"kNN at step 0 (untrained network): top-1 {knn_start['knn_top1']:.2f}% top-5 "
                  f"{knn_start['knn_top5']:.2f}% in {knn_start['knn_seconds']:.1f}s", flush=True)

    step = start_step
    pending = []            # (step, device metrics) not yet fetched
    last_record: Dict = {}
    t_mark, steps_mark = None, 0   # timing excludes the first (compiling) step
    train_time = 0.0
    eval_time = [0.0]
    evals_done = [0]
    warned: Dict[str, int] = {}  # warning kind -> last step it was printed

    def flush(step_now: int, log: bool):
        nonlocal t_mark, steps_mark, last_record, train_time
        fetched = jax.device_get(distributed.wait_ready([m for _, m in pending]))
        steps = [s for s, _ in pending]
        pending.clear()
        for s, m in zip(steps, fetched):
            record = _scalars(m)
            bad = metrics_lib.nonfinite_keys(record)
            if bad and not loss_scale.skip_is_benign(record):  # float16: a skipped step
                good = ckpt.latest_step()
                where = (f"the last good checkpoint is step {good} in {ckpt.directory}"
                         if good is not None else "no checkpoint was written before it")
                raise TrainingDiverged(
                    f"Training stopped at step {s}: {', '.join(sorted(bad))} became NaN/Inf; "
                    f"{where}. Rerun the same command with a lower learning rate (e.g. "
                    f"--config.optimizer.lr_weights={config.optimizer.lr_weights / 2:g}) or "
                    f"with --config.compute_dtype=float32 to resume from it (both may change "
                    f"on resume; see docs/faults.md).")
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
            record.update(knn.evaluate(state.variables(), probe=state.probe))
            eval_time[0] += record["knn_seconds"]
            evals_done[0] += 1
            record["knn_time_fraction"] = eval_time[0] / max(train_time + eval_time[0], 1e-9)
            t_mark = time.time()  # evaluation time is not training time
        last_record = record
        if is_lead:
            jsonl.write(record)
            tb.scalars(step_now, record)
            if wb is not None:
                wb.scalars(step_now, record)
            c = fetched[-1].get("c_block")
            if c is not None and (evaluated or step_now % config.checkpoint_every_steps == 0
                                  or step_now == total_steps):
                tb.image(step_now, "cross_correlation_vs_identity", c_matrix_image(np.asarray(c)))
                if wb is not None:
                    wb.image(step_now, "cross_correlation_vs_identity",
                             c_matrix_image(np.asarray(c)))
            for warning in _new_warnings(collapse_warnings(record), warned, step_now):
                print(f"warning at step {step_now}: {warning} (printed once while it "
                      f"lasts; the values are in metrics.jsonl)", flush=True)
            if evaluated:
                print(f"kNN at step {step_now}: top-1 {record['knn_top1']:.2f}% top-5 "
                      f"{record['knn_top5']:.2f}% in {record['knn_seconds']:.1f}s "
                      f"({100 * record['knn_time_fraction']:.1f}% of the run's time so far)"
                      + (f"; untrained network: top-1 {knn_start['knn_top1']:.2f}%"
                         if knn_start else ""), flush=True)
            eta = (total_steps - step_now) * record.get("step_time", float("nan"))
            evals_left = _remaining_evals(step_now, total_steps, config.eval_every_steps,
                                          config.log_every_steps) if knn is not None else 0
            note = ""
            if evals_left and evals_done[0]:  # projected kNN time, from the ones so far
                eta += evals_left * eval_time[0] / evals_done[0]
            elif evals_left:
                note = f" + {evals_left} kNN evaluation(s)"
            metrics_lib.print_progress(metrics_lib.progress_line(
                step_now, total_steps, steps_per_epoch, record, eta) + note)

    profiler = profiling.StepProfiler(config.get("profile_steps", ""),
                                      paths.join(workdir, "profile"), first_step=start_step)
    t_start = time.time()
    in_flight = collections.deque()  # losses of dispatched, maybe unfinished steps
    peer_lost = False
    try:
        with distributed.StopAgreement(mesh, tag=tag) as stop:
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
                    distributed.wait_ready(in_flight.popleft())
                if t_mark is None:
                    distributed.wait_ready(m)
                    t_mark, steps_mark = time.time(), step
                    if is_lead:
                        print(f"step {step} done in {t_mark - t_start:.1f}s (compilation included); "
                              f"next progress line at a multiple of {config.log_every_steps}",
                              flush=True)
                # The same answer on every process at this step (distributed.StopAgreement).
                stop_reason = stop.check(step)
                log_now = step % config.log_every_steps == 0 or step == total_steps
                save_now = step % config.checkpoint_every_steps == 0 or step == total_steps
                if log_now or save_now or stop_reason:
                    flush(step, log=log_now or bool(stop_reason))
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
        if jsonl is not None:
            jsonl.close()
            tb.close()
        if wb is not None:
            wb.close()
    return last_record
