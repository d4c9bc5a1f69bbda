"""The pure training step shared by every method, run under ``jax.shard_map``.

Inside the mapped body each device holds its slice of the global batch and
a replica of the state. Cross-device statistics come from collectives over
the ``data`` axis: every BatchNorm (backbone and heads) uses ``pmean``'d
moments, and each method's loss reduces its statistics with ``psum``/
``pmean``. The loss is therefore identical on every device and equal to the
single-device full-batch loss. With ``check_vma=True`` (the default) the
gradients of the replicated parameters come back already summed over
devices, i.e. equal to the full-batch gradient, so no extra gradient
reduction is applied (adding a psum would multiply them by the device
count; FIELD_NOTES §7).

The two views pass through the network one after the other, so each view's
BatchNorm statistics are its own (as two forward passes in PyTorch) and the
running averages are updated twice per step, like the official code.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import optax
from jax import lax
from jax.sharding import PartitionSpec as P

from barlow_jax.parallel import AXIS
from barlow_jax.state import TrainState

# optax >= 0.2.5 names it optax.tree.norm; global_norm is the older spelling.
_tree_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm


def step_key(seed_key, step):
    """The step's randomness depends only on (seed, step): resumes redraw it exactly."""
    return jax.random.fold_in(seed_key, step)


def _forward_two_views(model, params, batch_stats, v1, v2):
    out1, upd = model.apply({"params": params, "batch_stats": batch_stats}, v1,
                            train=True, mutable=["batch_stats"])
    out2, upd = model.apply({"params": params, "batch_stats": upd["batch_stats"]}, v2,
                            train=True, mutable=["batch_stats"])
    return out1, out2, upd["batch_stats"]


def ema_update(target, online, tau):
    """target <- tau * target + (1 - tau) * online, for the leaves target has."""
    return jax.tree.map(lambda t, o: tau * t + (1.0 - tau) * o, target,
                        {k: online[k] for k in target})


def train_step_body(state: TrainState, batch, device_data, seed_key, *, model, target_model,
                    method, tx, make_views, loss_config, ema_tau: Optional[Callable] = None,
                    health: Optional[Callable] = None, log_every_steps: int = 1):
    """One update on the local shard; returns (new_state, metrics).

    ``health(z, axis_name=, effective_rank=)`` adds embedding statistics; the
    expensive effective rank (an eigen-decomposition of the D x D scatter)
    runs only on steps that will be logged.
    """
    key = jax.random.fold_in(step_key(seed_key, state.step), lax.axis_index(AXIS))
    v1, v2 = make_views(batch, device_data, key)

    def loss_fn(params):
        out1, out2, new_bs = _forward_two_views(model, params, state.batch_stats, v1, v2)
        tgt1 = tgt2 = None
        new_target_bs = None
        if method.ema_target:
            t1, t2, new_target_bs = _forward_two_views(
                target_model, state.target["params"], state.target["batch_stats"], v1, v2)
            tgt1, tgt2 = jax.tree.map(lax.stop_gradient, (t1, t2))
        loss, metrics = method.loss(out1, out2, tgt1, tgt2, loss_config, AXIS)
        if health is not None:
            logged = (state.step + 1) % log_every_steps == 0
            metrics.update(health(lax.stop_gradient(out1["z"]), axis_name=AXIS,
                                  effective_rank=logged))
        return loss, (metrics, new_bs, new_target_bs)

    (loss, (metrics, new_bs, new_target_bs)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    target = state.target
    if method.ema_target:
        tau = ema_tau(state.step)
        target = {"params": ema_update(target["params"], params, tau),
                  "batch_stats": new_target_bs}
        metrics["ema_tau"] = tau
    metrics = dict(metrics, loss=loss, grad_norm=_tree_norm(grads),
                   param_norm=_tree_norm(params))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_bs,
                              opt_state=opt_state, target=target)
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
