"""The pure training step shared by every method, run under ``jax.shard_map``.

Inside the mapped body each device holds its slice of the global batch and
a replica of the state. Cross-device statistics come from collectives over
the ``data`` axis: every BatchNorm (backbone and heads) uses ``pmean``'d
moments, and each method's loss reduces its statistics with ``psum``/
``pmean`` (Barlow Twins forms C from gathered embeddings, methods/
barlow_twins.py). The loss is therefore identical on every device and equal
to the single-device full-batch loss.

Gradient reduction (``grad_reduction``): with ``check_vma=True`` (the
default) a replicated parameter meeting the device's batch is cast to
"varying" and the transpose of that cast is a ``psum``, so the gradients
come back already summed over devices, i.e. equal to the full-batch
gradient, and no explicit reduction is added (a psum more would multiply
them by the device count; FIELD_NOTES §7). Where that cast sits decides
what is reduced:

* ``'once'`` (default): every float32 parameter is cast to varying once, at
  the top of the loss, so each gradient is all-reduced exactly once per
  step, in float32, after both views' contributions are added.
* ``'per_use'``: the cast is left to JAX, which inserts it where the
  parameter meets the batch: after the bfloat16 cast of the kernel, once
  per view in the two-pass forward, so with ``compute_dtype=bfloat16``
  every kernel's gradient is all-reduced twice, in bfloat16 (the behaviour
  before issue 12; kept to measure the difference).

Views (``one_pass`` and the method's ``bn_views``, methods/__init__.py):

* per-view BN, ``one_pass=True`` (default): both views go through the
  network once, concatenated along the batch ([v1_local; v2_local] on each
  device); every BatchNorm normalises each view with that view's own global
  statistics and updates its running averages view 1 then view 2
  (models/norm.py), exactly what two passes compute, with every weight read
  once and twice the rows per kernel.
* per-view BN, ``one_pass=False``: two forward passes, view 1 then view 2
  (the running averages of the first feed the second).
* joint BN (SimCLR): one pass with one set of statistics over both views,
  as the official SimCLR model runs on the concatenated views.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import PartitionSpec as P

from barlow_jax import loss_scale, online_probe
from barlow_jax.methods import ema
from barlow_jax.parallel import AXIS
from barlow_jax.state import TrainState

# optax >= 0.2.5 names it optax.tree.norm; global_norm is the older spelling.
_tree_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm

GRAD_REDUCTIONS = ("once", "per_use")
BN_VIEWS = ("per_view", "joint")


def step_key(seed_key, step):
    """The step's randomness depends only on (seed, step): resumes redraw it exactly."""
    return jax.random.fold_in(seed_key, step)


def to_varying(tree, axis_name):
    """Marks replicated (invariant) values as device-varying: lax.pcast (JAX >= 0.10) or pvary."""
    pcast = getattr(lax, "pcast", None)
    if pcast is not None:
        return pcast(tree, axis_name, to="varying")
    return lax.pvary(tree, axis_name)


def forward_views(model, params, batch_stats, v1, v2, *, bn_views: str = "per_view",
                  one_pass: bool = True):
    """(out1, out2, new_batch_stats) of the two views in training mode (module doc)."""
    variables = {"params": params, "batch_stats": batch_stats}
    if bn_views not in BN_VIEWS:
        raise ValueError(f"bn_views={bn_views!r} is not supported; use one of {BN_VIEWS}.")
    if bn_views == "joint" or one_pass:
        n = v1.shape[0]
        out, upd = model.apply(variables, jnp.concatenate([v1, v2]), train=True,
                               views=1 if bn_views == "joint" else 2, mutable=["batch_stats"])
        return (jax.tree.map(lambda a: a[:n], out), jax.tree.map(lambda a: a[n:], out),
                upd["batch_stats"])
    out1, upd = model.apply(variables, v1, train=True, mutable=["batch_stats"])
    out2, upd = model.apply({"params": params, "batch_stats": upd["batch_stats"]}, v2,
                            train=True, mutable=["batch_stats"])
    return out1, out2, upd["batch_stats"]


def train_step_body(state: TrainState, batch, device_data, seed_key, *, model, target_model,
                    method, tx, make_views, loss_config, ema_tau: Optional[Callable] = None,
                    health: Optional[Callable] = None, log_every_steps: int = 1,
                    probe_tx=None, one_pass: bool = True, grad_reduction: str = "once"):
    """One update on the local shard; returns (new_state, metrics).

    ``health(z, axis_name=, effective_rank=)`` adds embedding statistics; the
    expensive effective rank (an eigen-decomposition) runs only on steps that
    will be logged. ``one_pass`` / ``grad_reduction``: module doc.
    """
    if grad_reduction not in GRAD_REDUCTIONS:
        raise ValueError(f"grad_reduction={grad_reduction!r} is not supported; use one of "
                         f"{GRAD_REDUCTIONS}.")
    bn_views = getattr(method, "bn_views", "per_view")
    forward = functools.partial(forward_views, bn_views=bn_views, one_pass=one_pass)
    # The same key on every device: make_views derives each example's key from it and
    # the example's global index, so views do not depend on the device count.
    key = step_key(seed_key, state.step)
    v1, v2 = make_views(batch, device_data, key)

    def loss_fn(params):
        if grad_reduction == "once":  # the transpose of this cast is the one fp32 all-reduce
            params = to_varying(params, AXIS)
        out1, out2, new_bs = forward(model, params, state.batch_stats, v1, v2)
        tgt1 = tgt2 = None
        new_target_bs = None
        if method.ema_target:
            t1, t2, new_target_bs = forward(
                target_model, state.target["params"], state.target["batch_stats"], v1, v2)
            tgt1, tgt2 = jax.tree.map(lax.stop_gradient, (t1, t2))
        loss, metrics = method.loss(out1, out2, tgt1, tgt2, loss_config, AXIS)
        if health is not None:
            logged = (state.step + 1) % log_every_steps == 0
            metrics.update(health(lax.stop_gradient(out1["z"]), axis_name=AXIS,
                                  effective_rank=logged))
        if probe_tx is not None:  # online probe input, taken out below
            metrics["_probe_features"] = lax.stop_gradient(out1["features"])
        return loss, (metrics, new_bs, new_target_bs)

    # grads: float32, summed over devices (the full-batch gradient), identical on every
    # device. float16: the loss is scaled before differentiation, the gradients unscaled.
    (loss, (metrics, new_bs, new_target_bs)), grads = loss_scale.value_and_grad(
        loss_fn, state.loss_scale)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    target = state.target
    if method.ema_target:
        tau = ema_tau(state.step)
        target = ema.update_target(target, params, tau, new_target_bs)
        metrics["ema_tau"] = tau
    metrics = dict(metrics, loss=loss, grad_norm=_tree_norm(grads),
                   param_norm=_tree_norm(params))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_bs,
                              opt_state=opt_state, target=target)
    if probe_tx is not None:  # online linear probe: after, and apart from, the backbone update
        probe, probe_metrics = online_probe.probe_update(
            state.probe, metrics.pop("_probe_features"),
            online_probe.batch_labels(batch, device_data), probe_tx, axis_name=AXIS)
        metrics.update(probe_metrics)
        new_state = new_state.replace(probe=probe)
    # float16: a step with non-finite gradients is skipped and the scale backs off.
    new_state, metrics = loss_scale.finish(state, new_state, grads, metrics)
    return new_state, metrics


def make_train_step(mesh, **kwargs):
    """jit(shard_map(train_step_body)): (state, batch, device_data, seed_key) -> (state, metrics).

    state and seed_key are replicated; batch and device_data are split over
    ``data`` on their leading axis. The state's buffers are donated.
    """
    body = functools.partial(train_step_body, **kwargs)
    mapped = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS), P()),
                           out_specs=(P(), P()))
    return jax.jit(mapped, donate_argnums=(0,))


def step_settings(config):
    """The ``config.step`` levers with their defaults (configs written before them lack some)."""
    s = config.get("step", None) or {}
    get = s.get if hasattr(s, "get") else (lambda k, d: d)
    return {"one_pass": bool(get("one_pass", True)),
            "grad_reduction": str(get("grad_reduction", "once")),
            "health_rank_dims": int(get("health_rank_dims", 2048))}


def build_train_step(config, mesh, *, method, tx, make_views, total_steps: int,
                     probe_tx=None):
    """The training step ``config`` describes: what ``train.py`` runs and ``bench.py`` times.

    Builds the online network (and BYOL's target) with BatchNorm over the
    ``data`` axis, the embedding health (effective rank on logged steps, on
    at most ``config.step.health_rank_dims`` dimensions, health.py) and
    the step levers of ``config.step``. ``make_views(batch, device_data,
    key) -> (v1, v2)`` comes from the data pipeline (or fixed views in the
    benchmark). Returns ``make_train_step``'s jitted function.
    """
    from barlow_jax.health import embedding_health
    from barlow_jax.models import build_ssl_net

    settings = step_settings(config)
    health = functools.partial(embedding_health, rank_dims=settings["health_rank_dims"])
    return make_train_step(
        mesh, model=build_ssl_net(config, axis_name=AXIS),
        target_model=(build_ssl_net(config, axis_name=AXIS, with_predictor=False)
                      if method.ema_target else None),
        method=method, tx=tx, make_views=make_views, loss_config=config.loss,
        ema_tau=method.ema_tau(config.loss, total_steps) if method.ema_target else None,
        health=health, log_every_steps=config.log_every_steps, probe_tx=probe_tx,
        one_pass=settings["one_pass"], grad_reduction=settings["grad_reduction"])
