"""BYOL (Grill et al., 2020): predict the target network's embedding of the other view.

The online network (backbone + projector + predictor) gives predictions p;
the target network (an EMA of the online backbone + projector, see
``barlow_jax.methods.ema``) gives embeddings z_t that receive no gradient:

    reg(p, z_t) = mean_b ( 2 - 2 cos(p_b, sg(z_t,b)) )   = mean_b || p/|p| - z_t/|z_t| ||^2
    loss        = reg(p1, z_t2) + reg(p2, z_t1)

Reference: deepmind-research ``byol/byol_experiment.py`` (``regression_loss``
on l2-normalised vectors, ``loss = mean(loss_view1 + loss_view2)``).
Convention: the symmetrised loss is the SUM of both directions, as in the
paper (L + L~) and the official code, so it lies in [0, 8]; SimSiam's loss
(``simsiam.py``) is instead the average of its two directions.
The batch mean is over the global batch (``pmean`` of equal-sized local
means under ``jax.shard_map``), so value and gradient equal the
single-device, full-batch ones.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from barlow_jax.methods.simclr import l2_normalize
from barlow_jax.parallel import batch_mean


def mean_cosine(p, z, axis_name: Optional[str] = None):
    """Global-batch mean of cos(p_b, sg(z_b)) for [N_local, D] arrays, in float32.

    Args:
        p: [N_local, D] predictions (receive the gradient).
        z: [N_local, D] targets (stop-gradient applied).
        axis_name: the mapped device axis for global-batch statistics, or None.

    Returns:
        The scalar mean cosine similarity over the global batch.
    """
    z = lax.stop_gradient(z)
    cos = jnp.sum(l2_normalize(p) * l2_normalize(z), axis=-1)
    return batch_mean(cos, axis_name)


def byol_loss(p, z_target, *, axis_name: Optional[str] = None) -> jax.Array:
    """One direction of BYOL: mean_b (2 - 2 cos(p_b, sg(z_target_b))), a scalar.

    Args:
        p: [N_local, D] online predictions for one view.
        z_target: [N_local, D] target projections of the other view (stop-gradient applied).
        axis_name: the mapped device axis for global-batch statistics, or None.

    Returns:
        The scalar loss, in [0, 4].

    Raises:
        ValueError: ``p`` and ``z_target`` are not two [N, D] arrays of the same shape.
    """
    if p.shape != z_target.shape or p.ndim != 2:
        raise ValueError(f"byol_loss needs a prediction and a target of the same [N, D] shape; "
                         f"got {p.shape} and {z_target.shape}: the predictor's last width "
                         f"must equal the projector's.")
    return 2.0 - 2.0 * mean_cosine(p, z_target, axis_name)


def byol(p1, p2, z1_target, z2_target, *,
         axis_name: Optional[str] = None) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Symmetrised BYOL loss: byol_loss(p1, z2_target) + byol_loss(p2, z1_target).

    Args:
        p1: [N_local, D] online predictions for view 1.
        p2: [N_local, D] online predictions for view 2.
        z1_target: [N_local, D] target projections for view 1 (stop-gradient applied here too).
        z2_target: [N_local, D] target projections for view 2.
        axis_name: the mapped device axis for global-batch statistics, or None.

    Returns:
        (loss, metrics): the scalar loss, in [0, 8], and ``cos_sim``, the mean
        cosine of the two directions.
    """
    loss12 = byol_loss(p1, z2_target, axis_name=axis_name)
    loss21 = byol_loss(p2, z1_target, axis_name=axis_name)
    loss = loss12 + loss21
    return loss, {"cos_sim": 1.0 - loss / 4.0}


def method_loss(out1, out2, tgt1, tgt2, loss_config, axis_name):
    """Registry adapter: online predictions ``p`` against target projections ``z``.

    Args:
        out1: the online network's outputs for view 1 (its prediction ``p`` is used).
        out2: the same for view 2.
        tgt1: the target (EMA) network's outputs for view 1 (its projection ``z``).
        tgt2: the same for view 2.
        loss_config: unused (BYOL's loss has no settings; the EMA's are ``ema_tau``'s).
        axis_name: the mapped device axis for global-batch statistics, or None.

    Returns:
        (loss, metrics) of ``byol``.

    Raises:
        ValueError: no target outputs (the method must be registered with
            ``ema_target=True``) or no predictor output ``p``.
    """
    del loss_config
    if tgt1 is None or tgt2 is None:
        raise ValueError("BYOL needs the target network's outputs; register it with "
                         "ema_target=True so the step runs the EMA target.")
    if "p" not in out1:
        raise ValueError("BYOL needs a predictor; set config.predictor.spec (e.g. '4096-256').")
    return byol(out1["p"], out2["p"], tgt1["z"], tgt2["z"], axis_name=axis_name)
