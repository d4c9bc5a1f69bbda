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

Two more LARS variants reproduce other published recipes (see their
docstrings): ``simclr_lars`` (google-research/simclr tf2/lars_optimizer.py,
classic momentum: the learning rate inside the momentum) and ``solo_lars``
(solo-learn solo/utils/lars.py: trust ratio eta |p| / (|g| + wd |p|), clip).

Gradient convention (``build_optimizer``): the gradient handed to the
optimizer is multiplied by ``grad_scale / reference_world_size`` first
(``reference_world_size = 0``: no division, the true full-batch gradient).
facebookresearch/barlowtwins all-reduces C outside autograd, so on W GPUs its
DDP-averaged gradient is the true gradient / W; ``reference_world_size = W``
reproduces that run exactly on any number of devices.
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
    """Barlow Twins' LARS (see module docstring); returns updates to add to params.

    Args:
        lr_weights: learning rate of the weights (ndim > 1): a number or a
            schedule of the update count.
        lr_biases: learning rate of biases and BatchNorm parameters (ndim 1).
        weight_decay: added to the weights' gradients before the trust ratio.
        momentum: the momentum coefficient.
        eta: the trust coefficient of the LARS ratio.

    Returns:
        An ``optax.GradientTransformation`` whose ``update`` needs ``params``.
    """

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


def _norm(x):
    return jnp.linalg.norm(x.astype(jnp.float32))


def simclr_lars(lr: ScalarOrSchedule, *, weight_decay: float, momentum: float = 0.9,
                eta: float = 0.001) -> optax.GradientTransformation:
    """SimCLR's LARS (google-research/simclr tf2/lars_optimizer.py, classic_momentum=True).

    Biases and BN parameters (ndim 1; the official code excludes the names
    'batch_normalization' and 'bias') get neither weight decay nor adaptation:

        weights:  d = g + wd * p ;  q = eta |p| / |d| if |p| > 0 and |d| > 0 else 1
        others:   d = g          ;  q = 1
        v = momentum * v + lr(t) * q * d      (lr INSIDE the momentum)
        p = p - v

    Args:
        lr: the learning rate: a number or a schedule of the update count.
        weight_decay: added to the weights' gradients before the trust ratio.
        momentum: the momentum coefficient.
        eta: the trust coefficient.

    Returns:
        An ``optax.GradientTransformation`` whose ``update`` needs ``params``.
    """

    def init_fn(params):
        return BtLarsState(count=jnp.zeros([], jnp.int32),
                           mu=jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params))

    def update_fn(grads, state, params=None):
        if params is None:
            raise ValueError("simclr_lars needs the parameters: call tx.update(grads, state, params).")
        rate = _value(lr, state.count)

        def one(g, p, v):
            g = g.astype(jnp.float32)
            if is_weight(p):
                d = g + weight_decay * p
                p_norm, d_norm = _norm(p), jnp.linalg.norm(d)
                q = jnp.where((p_norm > 0) & (d_norm > 0), eta * p_norm / d_norm, 1.0)
            else:
                d, q = g, 1.0
            v = momentum * v + rate * q * d
            return -v, v

        flat = jax.tree.map(one, grads, params, state.mu)
        updates = jax.tree.map(lambda _, t: t[0], grads, flat)
        mu = jax.tree.map(lambda _, t: t[1], grads, flat)
        return updates, BtLarsState(count=state.count + 1, mu=mu)

    return optax.GradientTransformation(init_fn, update_fn)


def solo_lars(lr: ScalarOrSchedule, *, weight_decay: float, momentum: float = 0.9,
              eta: float = 0.02, clip_lr: bool = True, exclude_bias_n_norm: bool = True,
              eps: float = 1e-8) -> optax.GradientTransformation:
    """solo-learn's LARS (solo/utils/lars.py, from PL Bolts), dampening 0, no Nesterov.

    For a parameter that is adapted (ndim != 1, or every parameter without
    ``exclude_bias_n_norm``) and has |p| > 0 and |g| > 0:

        r = eta |p| / (|g| + wd |p| + eps) ;  with clip_lr: r = min(r / lr(t), 1)
        d = r * (g + wd * p)
    otherwise d = g (no weight decay either). Then
        mu = momentum * mu + d ;  p = p - lr(t) * mu

    Args:
        lr: the learning rate: a number or a schedule of the update count.
        weight_decay: the weight decay, inside the trust ratio and the update.
        momentum: the momentum coefficient.
        eta: the trust coefficient.
        clip_lr: clip the ratio to at most 1 after dividing it by the learning rate.
        exclude_bias_n_norm: leave parameters of ndim 1 (biases, BatchNorm) unadapted.
        eps: added to the ratio's denominator.

    Returns:
        An ``optax.GradientTransformation`` whose ``update`` needs ``params``.
    """

    def init_fn(params):
        return BtLarsState(count=jnp.zeros([], jnp.int32),
                           mu=jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params))

    def update_fn(grads, state, params=None):
        if params is None:
            raise ValueError("solo_lars needs the parameters: call tx.update(grads, state, params).")
        rate = _value(lr, state.count)

        def one(g, p, mu):
            g = g.astype(jnp.float32)
            if jnp.ndim(p) != 1 or not exclude_bias_n_norm:
                p_norm, g_norm = _norm(p), jnp.linalg.norm(g)
                r = eta * p_norm / (g_norm + p_norm * weight_decay + eps)
                if clip_lr:
                    # lr 0 (first warmup step): r / 0 = inf, clipped to 1 as in torch.
                    r = jnp.minimum(jnp.where(rate > 0, r / jnp.where(rate > 0, rate, 1.0),
                                              jnp.inf), 1.0)
                ok = (p_norm > 0) & (g_norm > 0)
                d = jnp.where(ok, r * (g + weight_decay * p), g)
            else:
                d = g
            mu = momentum * mu + d
            return -rate * mu, mu

        flat = jax.tree.map(one, grads, params, state.mu)
        updates = jax.tree.map(lambda _, t: t[0], grads, flat)
        mu = jax.tree.map(lambda _, t: t[1], grads, flat)
        return updates, BtLarsState(count=state.count + 1, mu=mu)

    return optax.GradientTransformation(init_fn, update_fn)


def gradient_scale(opt_config) -> float:
    """The factor ``build_optimizer`` applies to the gradient before the optimizer.

    ``grad_scale`` (e.g. solo-learn's ``scale_loss``, a loss multiplier, which
    scales the gradient identically) divided by ``reference_world_size`` when
    that is > 0 (the official Barlow Twins code's gradient on that many GPUs).
    """
    w = int(opt_config.get("reference_world_size", 0))
    if w < 0:
        raise ValueError(f"config.optimizer.reference_world_size={w} must be >= 0 "
                         f"(0 = the true gradient, W = the official code's gradient on W GPUs).")
    scale = float(opt_config.get("grad_scale", 1.0))
    return scale / w if w > 0 else scale


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


def solo_schedule(peak: float, *, total_steps: int, warmup_steps: float,
                  warmup_start: float = 3e-5, final: float = 0.0) -> Callable[[jax.Array], jax.Array]:
    """solo-learn's ``warmup_cosine``: PL Bolts ``LinearWarmupCosineAnnealingLR`` stepped per update.

    solo/utils/lr_scheduler.py, with ``warmup_epochs = W`` updates (solo/methods/base.py:
    warmup epochs x steps per epoch), ``max_epochs = T`` updates, ``warmup_start_lr`` s
    (3e-5, not scaled by the batch) and ``eta_min`` e. Closed form of its chained rule:

        t = 0:      s
        0 < t < W:  s + t (peak - s) / (W - 1)      (peak is reached at t = W - 1)
        t >= W:     e + (peak - e) (1 + cos(pi (t - W) / (T - W))) / 2

    ``W = 0`` starts at the peak (solo-learn then passes warmup_start_lr = lr).
    """
    total_steps = max(int(total_steps), 1)
    w = min(max(float(warmup_steps), 0.0), float(total_steps))
    decay = max(total_steps - w, 1.0)

    def schedule(count):
        t = jnp.asarray(count, jnp.float32)
        if w > 1:
            warm = warmup_start + t * (peak - warmup_start) / (w - 1.0)
        else:
            warm = jnp.full_like(t, peak if w == 0 else warmup_start)
        cos = final + (peak - final) * 0.5 * (
            1.0 + jnp.cos(math.pi * jnp.clip(t - w, 0, decay) / decay))
        first = jnp.asarray(warmup_start if w > 0 else peak, jnp.float32)
        return jnp.where(t == 0, first, jnp.where(t < w, warm, cos))

    return schedule


SCHEDULES = ("bt", "solo_learn")


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
    ``simclr_lars`` / ``solo_lars``: one rate, lr_weights per 256 pairs.
    The gradient is first multiplied by ``gradient_scale(opt_config)`` (module
    doc; an ``optax.scale`` in front of the chain when it is not 1).
    ``schedule``: 'bt' (``bt_schedule``) or 'solo_learn' (``solo_schedule``,
    starting at ``warmup_start_lr``); ``final_lr_fraction`` x peak is the end.

    Args:
        opt_config: ``config.optimizer`` (name, learning rates, schedule,
            warmup, weight decay, momentum, ...; docs/config.md).
        batch_size: the global batch size, for ``scale_lr_by_batch``.
        steps_per_epoch: steps in one epoch, to turn ``warmup_epochs`` into steps.
        total_steps: the run's length; the schedule ends there.

    Returns:
        (tx, schedules): the optax transformation, and ``{name: schedule}`` of
        the learning rates it uses ('lr', plus 'lr_biases' for 'lars' and
        'lr_predictor' for 'sgd' with ``fix_predictor_lr``), for logging.

    Raises:
        ValueError: an unknown optimizer or schedule name, or
            ``fix_predictor_lr`` with an optimizer other than 'sgd' (or, from
            ``tx.init``, with a network without a predictor).
    """
    tx, schedules = _build(opt_config, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                           total_steps=total_steps)
    scale = gradient_scale(opt_config)
    if scale != 1.0:
        tx = optax.chain(optax.scale(scale), tx)
    return tx, schedules


def _build(opt_config, *, batch_size: int, steps_per_epoch: int, total_steps: int):
    if opt_config.get("fix_predictor_lr", False) and opt_config.name != "sgd":
        raise ValueError(f"config.optimizer.fix_predictor_lr=True is supported with "
                         f"optimizer.name='sgd' only (got {opt_config.name!r}); turn it off.")
    scale = batch_size / 256.0 if opt_config.scale_lr_by_batch else 1.0
    kind = str(opt_config.get("schedule", "bt"))
    if kind == "bt":
        warmup = int(round(opt_config.warmup_epochs * steps_per_epoch))
        sched = lambda base: bt_schedule(base * scale, total_steps=total_steps,
                                         warmup_steps=warmup,
                                         final_fraction=opt_config.final_lr_fraction)
    elif kind == "solo_learn":
        warmup = float(opt_config.warmup_epochs) * steps_per_epoch
        start = float(opt_config.get("warmup_start_lr", 3e-5))
        sched = lambda base: solo_schedule(base * scale, total_steps=total_steps,
                                           warmup_steps=warmup, warmup_start=start,
                                           final=base * scale * opt_config.final_lr_fraction)
    else:
        raise ValueError(f"config.optimizer.schedule={kind!r} is not supported; use one of "
                         f"{list(SCHEDULES)} ('bt': warmup from 0 then cosine, as main.py; "
                         f"'solo_learn': PL Bolts LinearWarmupCosineAnnealingLR).")
    if opt_config.name == "lars":
        lr_w, lr_b = sched(opt_config.lr_weights), sched(opt_config.lr_biases)
        tx = bt_lars(lr_w, lr_b, weight_decay=opt_config.weight_decay,
                     momentum=opt_config.momentum, eta=opt_config.eta)
        return tx, {"lr": lr_w, "lr_biases": lr_b}
    if opt_config.name == "simclr_lars":
        lr = sched(opt_config.lr_weights)
        return simclr_lars(lr, weight_decay=opt_config.weight_decay,
                           momentum=opt_config.momentum, eta=opt_config.eta), {"lr": lr}
    if opt_config.name == "solo_lars":
        lr = sched(opt_config.lr_weights)
        return solo_lars(lr, weight_decay=opt_config.weight_decay, momentum=opt_config.momentum,
                         eta=opt_config.eta, clip_lr=bool(opt_config.get("clip_lr", True)),
                         exclude_bias_n_norm=bool(opt_config.get("exclude_bias_n_norm", True))
                         ), {"lr": lr}
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
                     f"use 'lars', 'simclr_lars', 'solo_lars' or 'sgd'.")
