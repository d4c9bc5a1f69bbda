"""The paper's LARS and learning-rate schedule, as optax transformations.

``bt_lars`` reproduces ``LARS.step`` of facebookresearch/barlowtwins main.py
exactly. For each parameter p with gradient g and momentum buffer mu:

    weights (p.ndim > 1):  d = g + wd * p
                           q = eta * |p| / |d|  if |p| > 0 and |d| > 0 else 1
                           d = q * d ;  lr = lr_weights(t)
    biases, BN (ndim 1):   d = g     ;  lr = lr_biases(t)
    mu = momentum * mu + d
    p  = p - lr * mu

The learning rate multiplies AFTER momentum, so a changing schedule is
applied to the whole momentum buffer; ``optax.lars`` scales before the
momentum and therefore diverges from the paper under warmup/cosine
(FIELD_NOTES §2). ``t`` is the update count, 0 for the first update.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

ScalarOrSchedule = Union[float, Callable[[jax.Array], jax.Array]]


class BtLarsState(NamedTuple):
    count: jax.Array  # number of updates applied so far (int32)
    mu: Any           # momentum buffers, same tree as the parameters


def is_weight(p) -> bool:
    """LARS and weight decay apply to parameters with more than one dimension."""
    return jnp.ndim(p) > 1


def _value(lr: ScalarOrSchedule, count):
    return lr(count) if callable(lr) else jnp.asarray(lr, jnp.float32)


def bt_lars(lr_weights: ScalarOrSchedule, lr_biases: ScalarOrSchedule, *,
            weight_decay: float, momentum: float = 0.9,
            eta: float = 0.001) -> optax.GradientTransformation:
    """Barlow Twins' LARS (see module docstring); returns updates to add to params."""

    def init_fn(params):
        return BtLarsState(count=jnp.zeros([], jnp.int32),
                           mu=jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params))

    def update_fn(grads, state, params=None):
        if params is None:
            raise ValueError("bt_lars needs the parameters: call tx.update(grads, state, params).")
        lr_w = _value(lr_weights, state.count)
        lr_b = _value(lr_biases, state.count)

        def one(g, p, mu):
            g = g.astype(jnp.float32)
            if is_weight(p):
                d = g + weight_decay * p
                p_norm = jnp.linalg.norm(p)
                d_norm = jnp.linalg.norm(d)
                q = jnp.where((p_norm > 0) & (d_norm > 0), eta * p_norm / d_norm, 1.0)
                d = d * q
                lr = lr_w
            else:
                d, lr = g, lr_b
            mu = momentum * mu + d
            return -lr * mu, mu

        flat = jax.tree.map(one, grads, params, state.mu)
        updates = jax.tree.map(lambda _, t: t[0], grads, flat)
        mu = jax.tree.map(lambda _, t: t[1], grads, flat)
        return updates, BtLarsState(count=state.count + 1, mu=mu)

    return optax.GradientTransformation(init_fn, update_fn)


def bt_schedule(peak: float, *, total_steps: int, warmup_steps: int,
                final_fraction: float = 0.001) -> Callable[[jax.Array], jax.Array]:
    """``adjust_learning_rate`` of main.py: linear warmup from 0, cosine to final_fraction*peak.

    At update t:  t < W: peak * t / W;  else, with q = (1 + cos(pi (t-W)/(T-W))) / 2:
    peak * q + final_fraction * peak * (1 - q).
    """
    total_steps = max(int(total_steps), 1)
    warmup_steps = min(max(int(warmup_steps), 0), total_steps)
    decay_steps = max(total_steps - warmup_steps, 1)
    end = peak * final_fraction

    def schedule(count):
        t = jnp.asarray(count, jnp.float32)
        warm = peak * t / max(warmup_steps, 1)
        q = 0.5 * (1.0 + jnp.cos(math.pi * jnp.clip(t - warmup_steps, 0, decay_steps) / decay_steps))
        cos = peak * q + end * (1.0 - q)
        return jnp.where(t < warmup_steps, warm, cos)

    return schedule


def _predictor_labels(params):
    """'fixed' for every leaf of params['predictor'], 'scheduled' elsewhere."""
    if "predictor" not in params:
        raise ValueError("config.optimizer.fix_predictor_lr=True but the network has no "
                         "predictor; set config.predictor.spec or turn fix_predictor_lr off.")
    return {k: jax.tree.map(lambda _: "fixed" if k == "predictor" else "scheduled", v)
            for k, v in params.items()}


def build_optimizer(opt_config, *, batch_size: int, steps_per_epoch: int, total_steps: int):
    """(optax transformation, {name: schedule}) for ``config.optimizer``.

    ``lars``: bt_lars with lr_weights / lr_biases per 256 image pairs, scaled
    by batch/256 when ``scale_lr_by_batch``. ``sgd``: SGD with momentum and
    weight decay on every parameter (SimSiam's optimizer), lr_weights as base;
    with ``fix_predictor_lr`` the ``predictor`` subtree keeps the constant
    base rate (no warmup, no decay) and the rest follows the schedule.
    """
    if opt_config.get("fix_predictor_lr", False) and opt_config.name != "sgd":
        raise ValueError(f"config.optimizer.fix_predictor_lr=True is supported with "
                         f"optimizer.name='sgd' only (got {opt_config.name!r}); turn it off.")
    scale = batch_size / 256.0 if opt_config.scale_lr_by_batch else 1.0
    warmup = int(round(opt_config.warmup_epochs * steps_per_epoch))
    sched = lambda base: bt_schedule(base * scale, total_steps=total_steps, warmup_steps=warmup,
                                     final_fraction=opt_config.final_lr_fraction)
    if opt_config.name == "lars":
        lr_w, lr_b = sched(opt_config.lr_weights), sched(opt_config.lr_biases)
        tx = bt_lars(lr_w, lr_b, weight_decay=opt_config.weight_decay,
                     momentum=opt_config.momentum, eta=opt_config.eta)
        return tx, {"lr": lr_w, "lr_biases": lr_b}
    if opt_config.name == "sgd":
        lr = sched(opt_config.lr_weights)
        sgd = lambda rate: optax.chain(optax.add_decayed_weights(opt_config.weight_decay),
                                       optax.sgd(rate, momentum=opt_config.momentum))
        if not opt_config.get("fix_predictor_lr", False):
            return sgd(lr), {"lr": lr}
        # SimSiam's --fix-pred-lr: the predictor keeps lr_weights x batch/256 throughout
        # (facebookresearch/simsiam main_simsiam.py adjust_learning_rate, 'fix_lr' group).
        fixed = opt_config.lr_weights * scale
        tx = optax.multi_transform({"scheduled": sgd(lr), "fixed": sgd(fixed)},
                                   _predictor_labels)
        return tx, {"lr": lr, "lr_predictor": lambda count: jnp.full([], fixed, jnp.float32)}
    raise ValueError(f"config.optimizer.name={opt_config.name!r} is not supported; "
                     f"use 'lars' or 'sgd'.")
