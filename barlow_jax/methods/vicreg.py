"""VICReg (Bardes, Ponce & LeCun, 2022): variance-invariance-covariance regularisation.

For embeddings z1, z2 of shape [N, D] (N = global batch):

    invariance = mean_{b,d} (z1 - z2)^2                        (F.mse_loss)
    zc         = z - mean_b z                                  per view
    std        = sqrt(sum_b zc^2 / (N - 1) + 1e-4)             unbiased variance
    variance   = mean_d relu(1 - std_1) / 2 + mean_d relu(1 - std_2) / 2
    cov        = zc^T zc / (N - 1)                             (D x D)
    covariance = sum_{i!=j} cov_1[i,j]^2 / D + sum_{i!=j} cov_2[i,j]^2 / D
    loss       = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance

Reference: facebookresearch/vicreg ``main_vicreg.py`` (``VICReg.forward``),
defaults sim 25, std 25, cov 1. Differences from the official code: there
the invariance term is the mean squared error of the *local* batch (each
rank's own share, then DDP averages the gradients) while variance and
covariance use the batch gathered from all ranks (``FullGatherLayer``).
Here all three terms are global-batch statistics reduced with collectives
inside differentiation (the invariance term is the ``pmean`` of the local
means, exact because every device holds the same number of rows), so under
``jax.shard_map`` the value and the gradient equal the single-device,
full-batch ones whatever the device count.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from barlow_jax.parallel import global_mean, global_sum

STD_EPS = 1e-4


def _variance_covariance(z, axis_name: Optional[str]):
    """Returns (variance term, covariance term) of one view over the global batch."""
    n = global_sum(z.shape[0], axis_name)
    d = z.shape[1]
    mean = global_sum(jnp.sum(z, axis=0), axis_name) / n
    zc = z - mean
    var = global_sum(jnp.sum(zc * zc, axis=0), axis_name) / (n - 1)
    std = jnp.sqrt(var + STD_EPS)
    std_term = jnp.mean(jax.nn.relu(1.0 - std))
    cov = global_sum(jnp.einsum("bi,bj->ij", zc, zc, precision=lax.Precision.HIGHEST),
                axis_name) / (n - 1)
    # Mask the diagonal rather than subtracting it: at D = 8192 the diagonal
    # dominates sum(cov^2) and the difference would lose float32 digits.
    off = jnp.where(jnp.eye(d, dtype=bool), 0.0, cov)
    return std_term, jnp.sum(off * off) / d


def vicreg(z1, z2, *, sim_coeff: float = 25.0, std_coeff: float = 25.0,
           cov_coeff: float = 1.0,
           axis_name: Optional[str] = None) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """VICReg loss of two [N_local, D] embeddings; returns (loss, metrics).

    Computed in float32 whatever the input dtype. With ``axis_name`` (inside
    ``jax.shard_map`` over that axis, equal local batches) every term covers
    the global batch and every device returns the same full loss. Needs a
    global batch of at least 2 (unbiased variance).

    Args:
        z1: [N_local, D] embeddings of view 1.
        z2: [N_local, D] embeddings of view 2, row i the same image as row i of ``z1``.
        sim_coeff: weight of the invariance term (official default 25).
        std_coeff: weight of the variance term (25).
        cov_coeff: weight of the covariance term (1).
        axis_name: the mapped device axis for global-batch statistics, or None.

    Returns:
        (loss, metrics): the scalar loss and the unweighted terms ``invariance``,
        ``variance`` and ``covariance``.

    Raises:
        ValueError: ``z1`` and ``z2`` are not two [N, D] arrays of the same shape.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"vicreg needs two [N, D] embeddings of the same shape; got "
                         f"{z1.shape} and {z2.shape}.")
    z1 = z1.astype(jnp.float32)
    z2 = z2.astype(jnp.float32)
    invariance = global_mean(jnp.mean((z1 - z2) ** 2), axis_name)
    std1, cov1 = _variance_covariance(z1, axis_name)
    std2, cov2 = _variance_covariance(z2, axis_name)
    variance = std1 / 2 + std2 / 2
    covariance = cov1 + cov2
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    return loss, {"invariance": invariance, "variance": variance, "covariance": covariance}


def method_loss(out1, out2, tgt1, tgt2, loss_config, axis_name):
    """Registry adapter: VICReg on the projector outputs ``z``.

    Args:
        out1: the online network's outputs for view 1 (its projection ``z`` is used).
        out2: the same for view 2.
        tgt1: unused (VICReg has no target network).
        tgt2: unused.
        loss_config: ``config.loss``: ``sim_coeff``, ``std_coeff``, ``cov_coeff``.
        axis_name: the mapped device axis for global-batch statistics, or None.

    Returns:
        (loss, metrics) of ``vicreg``.
    """
    del tgt1, tgt2
    return vicreg(out1["z"], out2["z"], sim_coeff=loss_config.sim_coeff,
                  std_coeff=loss_config.std_coeff, cov_coeff=loss_config.cov_coeff,
                  axis_name=axis_name)
