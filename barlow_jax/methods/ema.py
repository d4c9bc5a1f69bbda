"""The BYOL target network: an exponential moving average of the online network.

    tau_k  = end - (end - base) * (cos(pi * k / K) + 1) / 2      (k = step, K = total steps)
    target = tau_k * target + (1 - tau_k) * online               (after each online update)

Reference: BYOL paper section 3.2 and deepmind-research ``byol/utils/
schedules.py`` (``target_ema``, base 0.996 for 1000 epochs, 0.99 for
100-300) and ``byol_experiment.py`` (``x + (1 - tau) * (y - x)``).

What is averaged: the target's *parameters* only. Its BatchNorm statistics
are its own: the target network runs in training mode (BN normalises with
the batch statistics, synchronised across devices) and its running
averages are updated by that forward pass, exactly as deepmind's BYOL keeps
``target_state`` from the target's own ``apply``. Running averages are used
only when the target is evaluated in inference mode.

The target has no predictor: ``init_target`` drops the ``predictor``
subtree of the online variables, and ``update_target`` averages only the
subtrees the target has. All functions are pure and jit-friendly.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

PREDICTOR = "predictor"


def ema_decay(step, total_steps, base: float = 0.996, end: float = 1.0) -> jax.Array:
    """tau(step) = end - (end - base) * (cos(pi * step / total_steps) + 1) / 2, float32.

    ``step`` may be traced. Steps past ``total_steps`` keep tau at ``end``
    (deepmind clips the step the same way).

    Args:
        step: the training step (a number or a traced scalar).
        total_steps: the run's number of training steps (positive).
        base: tau at step 0 (BYOL's 0.996).
        end: tau at ``total_steps``.

    Returns:
        The float32 scalar tau.

    Raises:
        ValueError: a Python ``total_steps`` that is not positive.
    """
    if isinstance(total_steps, (int, float)) and total_steps <= 0:
        raise ValueError(f"total_steps={total_steps} must be positive; pass the run's number "
                         f"of training steps.")
    progress = jnp.clip(jnp.asarray(step, jnp.float32) / total_steps, 0.0, 1.0)
    return end - (end - base) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0


def schedule(loss_config, total_steps):
    """tau(step) of ``config.loss`` (``ema_start`` -> ``ema_end``) over ``total_steps``.

    The registry's ``Method.ema_tau`` for BYOL.

    Args:
        loss_config: ``config.loss``: ``ema_start`` and ``ema_end``.
        total_steps: the run's number of training steps.

    Returns:
        A function of the step returning ``ema_decay``'s tau.
    """
    return lambda step: ema_decay(step, total_steps, base=loss_config.ema_start,
                                  end=loss_config.ema_end)


def ema_update(target, online, tau):
    """tau * target + (1 - tau) * online, leaf by leaf over pytrees of the same structure.

    Written as ``target + (1 - tau) * (online - target)`` (deepmind's form;
    tau = 1 leaves the target bit-exact). Leaves keep the target's dtype.
    """
    t_def, o_def = jax.tree.structure(target), jax.tree.structure(online)
    if t_def != o_def:
        raise ValueError(f"ema_update needs target and online pytrees of the same structure; "
                         f"got {t_def} and {o_def}: pass the online parameters restricted to "
                         f"the target's subtrees (see update_target).")
    return jax.tree.map(lambda t, o: (t + (1.0 - tau) * (o - t)).astype(t.dtype),
                        target, online)


def _without_predictor(tree: Mapping[str, Any]):
    return {k: v for k, v in tree.items() if k != PREDICTOR}


def init_target(params: Mapping[str, Any], batch_stats: Mapping[str, Any]):
    """Target variables from the online ones: {'params', 'batch_stats'} without the predictor.

    The leaves are copies, so the online and target trees never share a
    buffer (the train state may be donated to the step).
    """
    copy = lambda tree: jax.tree.map(jnp.array, _without_predictor(tree))
    return {"params": copy(params), "batch_stats": copy(batch_stats)}


def update_target(target: Mapping[str, Any], online_params: Mapping[str, Any], tau,
                  batch_stats: Optional[Mapping[str, Any]] = None):
    """One EMA step of the target after the online update.

    ``target``: {'params', 'batch_stats'} as from ``init_target``.
    ``online_params``: the online network's updated params (with or without
    the predictor). ``batch_stats``: the target's BN statistics as updated by
    its own training-mode forward pass in this step; None keeps the old ones.
    """
    missing = [k for k in target["params"] if k not in online_params]
    if missing:
        raise ValueError(f"online params lack the target's subtrees {missing}; pass the "
                         f"online network's full params.")
    online = {k: online_params[k] for k in target["params"]}
    return {"params": ema_update(dict(target["params"]), online, tau),
            "batch_stats": target["batch_stats"] if batch_stats is None else batch_stats}
