"""Barlow Twins (Zbontar et al., 2021): redundancy reduction between views.

    z_n = (z - mean_b z) / sqrt(var_b z + 1e-5)      per view, GLOBAL batch
    C   = z1_n^T z2_n / N                            (D x D)
    L   = sum_i (1 - C_ii)^2 + lambda * sum_{i!=j} C_ij^2

Reference: facebookresearch/barlowtwins main.py (BatchNorm1d affine=False,
biased variance, eps 1e-5). Differences from the official code: there C is
all-reduced outside autograd, so every rank back-propagates only its own
batch's share and DDP then averages: the gradient is 1/world_size of the
true full-batch gradient. Here the statistics and C are reduced with
collectives *inside* differentiation, so under ``jax.shard_map`` the value
and the gradient both equal the single-device, full-batch ones, whatever
the device count.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

BN_EPS = 1e-5


def _global_mean(x, axis_name):
    m = jnp.mean(x, axis=0)
    return lax.pmean(m, axis_name) if axis_name is not None else m


def batch_normalize(z, axis_name: Optional[str] = None, eps: float = BN_EPS):
    """Per-feature standardisation with mean and biased variance over the global batch."""
    mean = _global_mean(z, axis_name)
    zc = z - mean
    var = _global_mean(zc * zc, axis_name)
    return zc * lax.rsqrt(var + eps)


def cross_correlation(z1, z2, axis_name: Optional[str] = None):
    """C = z1n^T z2n / N_global with each view normalised on its own."""
    z1n = batch_normalize(z1.astype(jnp.float32), axis_name)
    z2n = batch_normalize(z2.astype(jnp.float32), axis_name)
    n = z1.shape[0]
    c = jnp.einsum("bi,bj->ij", z1n, z2n, precision=lax.Precision.HIGHEST)
    if axis_name is not None:
        c = lax.psum(c, axis_name)
        n = lax.psum(n, axis_name)
    return c / n


C_BLOCK = 64  # top-left block of C returned by method_loss for TensorBoard pictures


def _loss_from_c(c, lambd):
    diag = jnp.diagonal(c)
    on_diag = jnp.sum((1.0 - diag) ** 2)
    off_diag = jnp.sum(c * c) - jnp.sum(diag * diag)
    d = c.shape[0]
    mean_abs_off = (jnp.sum(jnp.abs(c)) - jnp.sum(jnp.abs(diag))) / max(d * (d - 1), 1)
    return on_diag + lambd * off_diag, {"on_diag": on_diag, "off_diag": off_diag,
                                        "mean_abs_off_diag": mean_abs_off}


def barlow_twins(z1, z2, *, lambd: float = 0.0051,
                 axis_name: Optional[str] = None) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Barlow Twins loss of two [N_local, D] embeddings; returns (loss, metrics).

    With ``axis_name`` (inside shard_map/pmap over that axis) the statistics
    and C cover the global batch; every device returns the same full loss.
    Metrics: ``on_diag`` = sum (1 - C_ii)^2, ``off_diag`` = sum_{i!=j} C_ij^2
    (unweighted), ``mean_abs_off_diag``.
    """
    return _loss_from_c(cross_correlation(z1, z2, axis_name), lambd)


def method_loss(out1, out2, tgt1, tgt2, loss_config, axis_name):
    """The registry adapter; its metrics also carry ``c_block``, C[:64, :64] (not a scalar)."""
    del tgt1, tgt2
    c = cross_correlation(out1["z"], out2["z"], axis_name)
    loss, metrics = _loss_from_c(c, loss_config.lambd)
    metrics["c_block"] = lax.stop_gradient(c[:C_BLOCK, :C_BLOCK])
    return loss, metrics
