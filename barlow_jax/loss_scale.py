"""Dynamic loss scaling for float16 compute (GPUs without bfloat16 units: T4, V100).

float16 has 5 exponent bits: gradients below ~6e-8 flush to zero in the
backward pass. The loss is therefore multiplied by a scale S before
differentiation and the gradients divided by S afterwards (in float32), and
S adapts. The rule is the one of ``flax.training.dynamic_scale.DynamicScale``
(same defaults: S0 = 2^16, growth 2, backoff 0.5, interval 2000):

    finite = every gradient entry is finite (after unscaling)
    grow   = good_steps == interval
    S'     = min(S * growth, float32 max)   if finite and grow
             S                              if finite and not grow
             max(S * backoff, float32 tiny) if not finite
    good_steps' = 0 if (grow or not finite) else good_steps + 1

A step whose gradients are not finite is *skipped*: parameters, BatchNorm
statistics, optimizer, EMA target and online-probe state stay as they were
(``select``); only ``step`` advances (the batch is consumed) and S backs off.
Such a step is not a divergence (``skip_is_benign``) while S stays >= 1; when
even S < 1 overflows, the trainer's NaN/Inf guard stops the run as for any
other dtype. For bfloat16 and float32 nothing here runs (``init`` returns None
and the step is the plain ``jax.value_and_grad``).

The state lives in ``TrainState.loss_scale`` and is checkpointed with it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

INITIAL_SCALE = 2.0 ** 16
GROWTH_FACTOR = 2.0
BACKOFF_FACTOR = 0.5
GROWTH_INTERVAL = 2000
MIN_SCALE = float(np.finfo(np.float32).tiny)
MAX_SCALE = float(np.finfo(np.float32).max)
BENIGN_MIN_SCALE = 1.0  # a skipped step with S below this is a divergence


@flax.struct.dataclass
class LossScale:
    """scale: float32 scalar S. good_steps: consecutive finite steps since S last
    changed (int32). skipped: steps skipped so far (int32, logged)."""

    scale: jax.Array
    good_steps: jax.Array
    skipped: jax.Array


def init(config) -> "LossScale | None":
    """The initial state when ``config``'s compute dtype resolves to float16, else None."""
    from barlow_jax.models import compute_dtype
    if compute_dtype(config) != jnp.float16:
        return None
    return LossScale(scale=jnp.asarray(INITIAL_SCALE, jnp.float32),
                     good_steps=jnp.zeros([], jnp.int32), skipped=jnp.zeros([], jnp.int32))


def adjust(ls: LossScale, finite) -> LossScale:
    """The update rule of the module docstring."""
    grow = ls.good_steps == GROWTH_INTERVAL
    grown = jnp.where(grow, jnp.minimum(ls.scale * GROWTH_FACTOR, MAX_SCALE), ls.scale)
    backed = jnp.maximum(ls.scale * BACKOFF_FACTOR, MIN_SCALE)
    return LossScale(scale=jnp.where(finite, grown, backed).astype(jnp.float32),
                     good_steps=jnp.where(grow | ~finite, 0, ls.good_steps + 1).astype(jnp.int32),
                     skipped=(ls.skipped + (~finite).astype(jnp.int32)).astype(jnp.int32))


def all_finite(tree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    ok = jnp.array(True)
    for leaf in leaves:
        ok &= jnp.all(jnp.isfinite(leaf))
    return ok


def value_and_grad(fn: Callable, ls) -> Callable:
    """``jax.value_and_grad(fn, has_aux=True)``; with a LossScale, of S * loss, then /S.

    ``fn(params) -> (loss, aux)``. Returns ``(loss, aux), grads`` with the loss
    and the float32 gradients unscaled.
    """
    if ls is None:
        return jax.value_and_grad(fn, has_aux=True)

    def scaled(params):
        loss, aux = fn(params)
        return ls.scale * loss.astype(jnp.float32), aux

    def wrapped(params):
        (loss, aux), grads = jax.value_and_grad(scaled, has_aux=True)(params)
        grads = jax.tree.map(lambda g: g.astype(jnp.float32) / ls.scale, grads)
        return (loss / ls.scale, aux), grads

    return wrapped


def select(finite, new, old):
    """``new`` where ``finite`` else ``old``, leaf by leaf (same tree structure)."""
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


def finish(old_state, new_state, grads, metrics: Dict[str, Any]):
    """After the update: skip it when the gradients are not finite, adjust S.

    Identity (returns its inputs) when ``old_state.loss_scale`` is None.
    Adds the metrics ``loss_scale`` (S after adjusting), ``grads_finite`` (1/0)
    and ``skipped_steps`` (so far).
    """
    ls = old_state.loss_scale
    if ls is None:
        return new_state, metrics
    finite = all_finite(grads)
    kept = {f: select(finite, getattr(new_state, f), getattr(old_state, f))
            for f in ("params", "batch_stats", "opt_state", "target", "probe")}
    new_ls = adjust(ls, finite)
    metrics = dict(metrics, loss_scale=new_ls.scale,
                   grads_finite=finite.astype(jnp.float32), skipped_steps=new_ls.skipped)
    return new_state.replace(loss_scale=new_ls, **kept), metrics


def skip_is_benign(record: Dict[str, float]) -> bool:
    """True for a logged float16 step that was skipped (non-finite gradients) while S >= 1.

    Its NaN/Inf metrics come from the skipped computation, not from the state.
    """
    return (record.get("grads_finite", 1.0) == 0.0
            and record.get("loss_scale", 0.0) >= BENIGN_MIN_SCALE)


def restore(restore_fn: Callable, template, step: int):
    """``restore_fn(template, step)``, also across a change of compute dtype on resume.

    A checkpoint written without a loss scale (bfloat16/float32) restored under
    float16 starts from the initial S; one written with it, restored under another
    dtype, drops it. ``compute_dtype`` may change on resume (checkpointing.RESUMABLE_KEYS).
    """
    try:
        return restore_fn(template, step)
    except (ValueError, KeyError, TypeError) as first:
        if template.loss_scale is not None:
            other = template.replace(loss_scale=None)
        else:
            other = template.replace(loss_scale=LossScale(
                scale=jnp.zeros([], jnp.float32), good_steps=jnp.zeros([], jnp.int32),
                skipped=jnp.zeros([], jnp.int32)))
        try:
            restored = restore_fn(other, step)
        except Exception:
            raise first from None
        return restored.replace(loss_scale=template.loss_scale)
