"""SimSiam (Chen & He, 2021): a predictor and a stop-gradient, no target network.

One network gives projections z and predictions p for both views:

    D(p, z) = - mean_b cos(p_b, sg(z_b))
    loss    = D(p1, z2) / 2 + D(p2, z1) / 2              (minimum -1)

Reference: facebookresearch/simsiam ``main_simsiam.py``
(``-(criterion(p1, z2).mean() + criterion(p2, z1).mean()) * 0.5`` with
``nn.CosineSimilarity(dim=1)``, z detached in ``builder.py``). The batch
mean is over the global batch (``pmean`` under ``jax.shard_map``), so value
and gradient equal the single-device, full-batch ones.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from barlow_jax.methods.byol import mean_cosine
from barlow_jax.methods.simclr import l2_normalize
from barlow_jax.parallel import batch_mean


def negative_cosine(p, z, *, axis_name: Optional[str] = None) -> jax.Array:
    """D(p, z) = -mean_b cos(p_b, sg(z_b)) over the global batch, a scalar.

    Args:
        p: [N_local, D] predictions for one view.
        z: [N_local, D] projections of the other view (stop-gradient applied).
        axis_name: the mapped device axis for global-batch statistics, or None.

    Returns:
        The scalar D(p, z), in [-1, 1].

    Raises:
        ValueError: ``p`` and ``z`` are not two [N, D] arrays of the same shape.
    """
    if p.shape != z.shape or p.ndim != 2:
        raise ValueError(f"negative_cosine needs p and z of the same [N, D] shape; got "
                         f"{p.shape} and {z.shape}: the predictor's last width must equal "
                         f"the projector's.")
    return -mean_cosine(p, z, axis_name)


def normalized_std(z, axis_name: Optional[str] = None) -> jax.Array:
    """Mean over dimensions of the global-batch std of z/|z| (SimSiam's collapse monitor).

    About 1/sqrt(D) for well-spread embeddings, 0 when they collapse to a point.
    Population (biased) std; no gradient.

    Args:
        z: [N_local, D] embeddings.
        axis_name: the mapped device axis for global-batch statistics, or None.

    Returns:
        The scalar mean standard deviation.
    """
    h = l2_normalize(lax.stop_gradient(z))
    hc = h - batch_mean(h, axis_name)
    return jnp.mean(jnp.sqrt(batch_mean(hc * hc, axis_name)))


def simsiam(p1, p2, z1, z2, *,
            axis_name: Optional[str] = None) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """SimSiam loss D(p1, z2)/2 + D(p2, z1)/2; returns (loss, metrics).

    Args:
        p1: [N_local, D] predictions for view 1.
        p2: [N_local, D] predictions for view 2.
        z1: [N_local, D] projections of view 1 (stop-gradient applied).
        z2: [N_local, D] projections of view 2 (stop-gradient applied).
        axis_name: the mapped device axis for global-batch statistics, or None.

    Returns:
        (loss, metrics): the scalar loss (minimum -1), ``cos_sim`` (= -loss)
        and ``z_std`` (``normalized_std`` of z1).
    """
    loss = (negative_cosine(p1, z2, axis_name=axis_name) / 2
            + negative_cosine(p2, z1, axis_name=axis_name) / 2)
    return loss, {"cos_sim": -loss, "z_std": normalized_std(z1, axis_name)}


def method_loss(out1, out2, tgt1, tgt2, loss_config, axis_name):
    """Registry adapter: predictions ``p`` against the same network's detached ``z``.

    Args:
        out1: the network's outputs for view 1 (prediction ``p`` and projection ``z``).
        out2: the same for view 2.
        tgt1: unused (SimSiam has no target network).
        tgt2: unused.
        loss_config: unused (SimSiam's loss has no settings).
        axis_name: the mapped device axis for global-batch statistics, or None.

    Returns:
        (loss, metrics) of ``simsiam``.

    Raises:
        ValueError: the network has no predictor output ``p``.
    """
    del tgt1, tgt2, loss_config
    if "p" not in out1:
        raise ValueError("SimSiam needs a predictor; set config.predictor.spec "
                         "(e.g. '512-2048').")
    return simsiam(out1["p"], out2["p"], out1["z"], out2["z"], axis_name=axis_name)
