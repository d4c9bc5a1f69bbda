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

Communication (``c_reduction``): forming C as ``psum`` of each device's
z1n^T z2n all-reduces a D x D float32 matrix every step (268 MB at D =
8192, ring traffic 2x that). ``'gather'`` (the default) instead all-gathers
the normalised view-1 embeddings ([N, D]) and exchanges view 2 by columns
with an ``all_to_all`` ([N, D/P] per device), so device k forms the column
block C[:, k D/P : (k+1) D/P] = z1n^T z2n[:, block k] / N and the loss
terms are ``psum``'d scalars. Same FLOPs per device (2 N D^2 / P), ring
traffic (N D + N D / P) x 4 bytes forward and the same backward
(reduce-scatter + all_to_all, the transposes), about 4x less than the
psum of C at N = 2048, D = 8192 and P = 8, independent of P. It needs D
divisible by the device count and falls back to the psum otherwise.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from barlow_jax.parallel import batch_mean, global_sum
from barlow_jax.pictures import Picture, c_matrix_image

BN_EPS = 1e-5
MEAN_ABS_OFF_DIAG_HIGH = 0.5  # warnings(): dimensions strongly correlated across views


def batch_normalize(z, axis_name: Optional[str] = None, eps: float = BN_EPS):
    """Per-feature standardisation with mean and biased variance over the global batch.

    Args:
        z: [N_local, D] embeddings.
        axis_name: the mapped device axis the batch is split over (inside
            ``jax.shard_map``), or None for a batch on one device.
        eps: added to the variance (BatchNorm1d's 1e-5).

    Returns:
        (z - mean) / sqrt(var + eps), the shape of ``z``.
    """
    mean = batch_mean(z, axis_name)
    zc = z - mean
    var = batch_mean(zc * zc, axis_name)
    return zc * lax.rsqrt(var + eps)


def cross_correlation(z1, z2, axis_name: Optional[str] = None):
    """C = z1n^T z2n / N_global with each view normalised on its own.

    Args:
        z1: [N_local, D1] embeddings of view 1 (any float dtype; computed in float32).
        z2: [N_local, D2] embeddings of view 2.
        axis_name: the mapped device axis for global-batch statistics, or None.

    Returns:
        The [D1, D2] float32 cross-correlation matrix, the same on every device.
    """
    z1n = batch_normalize(z1.astype(jnp.float32), axis_name)
    z2n = batch_normalize(z2.astype(jnp.float32), axis_name)
    n = z1.shape[0]
    c = jnp.einsum("bi,bj->ij", z1n, z2n, precision=lax.Precision.HIGHEST)
    return global_sum(c, axis_name) / global_sum(n, axis_name)


C_BLOCK = 64  # top-left block of C returned by method_loss for TensorBoard pictures


def _loss_from_c(c, lambd):
    diag = jnp.diagonal(c)
    on_diag = jnp.sum((1.0 - diag) ** 2)
    off_diag = jnp.sum(c * c) - jnp.sum(diag * diag)
    d = c.shape[0]
    mean_abs_off = (jnp.sum(jnp.abs(c)) - jnp.sum(jnp.abs(diag))) / max(d * (d - 1), 1)
    return on_diag + lambd * off_diag, {"on_diag": on_diag, "off_diag": off_diag,
                                        "mean_abs_off_diag": mean_abs_off}


C_REDUCTIONS = ("gather", "psum")


def _terms_gathered(z1n, z2n, axis_name):
    """(on_diag, off_diag, sum |C_ij| off the diagonal) from C's column blocks (module doc)."""
    p = lax.axis_size(axis_name)
    d = z1n.shape[1]
    b = d // p
    g1 = lax.all_gather(z1n, axis_name, tiled=True)                       # [N, D]
    cols = lax.all_to_all(z2n, axis_name, 1, 0, tiled=True)               # [N, D/P]
    n = g1.shape[0]
    block = jnp.einsum("bi,bj->ij", g1, cols, precision=lax.Precision.HIGHEST) / n  # [D, D/P]
    square = lax.dynamic_slice_in_dim(block, lax.axis_index(axis_name) * b, b, axis=0)
    diag = jnp.diagonal(square)                                           # C_ii of this block
    on = jnp.sum((1.0 - diag) ** 2)
    off = jnp.sum(block * block) - jnp.sum(diag * diag)
    abs_off = jnp.sum(jnp.abs(block)) - jnp.sum(jnp.abs(diag))
    return global_sum((on, off, abs_off), axis_name)


def _metrics(on_diag, off_diag, abs_off, d, lambd):
    return on_diag + lambd * off_diag, {"on_diag": on_diag, "off_diag": off_diag,
                                        "mean_abs_off_diag": abs_off / max(d * (d - 1), 1)}


def barlow_twins(z1, z2, *, lambd: float = 0.0051, axis_name: Optional[str] = None,
                 c_reduction: str = "gather") -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Barlow Twins loss of two [N_local, D] embeddings; returns (loss, metrics).

    With ``axis_name`` (inside shard_map/pmap over that axis) the statistics
    and C cover the global batch; every device returns the same full loss.

    Args:
        z1: [N_local, D] embeddings of view 1 (any float dtype; computed in float32).
        z2: [N_local, D] embeddings of view 2, row i the same image as row i of ``z1``.
        lambd: weight of the off-diagonal (redundancy) term; the paper's 0.0051.
        axis_name: the mapped device axis for global-batch statistics, or None.
        c_reduction: 'gather' (C in column blocks from gathered embeddings)
            or 'psum' (the whole C all-reduced); same value and gradient
            (module doc). 'gather' falls back to 'psum' when D is not
            divisible by the device count.

    Returns:
        (loss, metrics): the scalar loss and a dict of scalars, ``on_diag`` =
        sum (1 - C_ii)^2, ``off_diag`` = sum_{i!=j} C_ij^2 (unweighted) and
        ``mean_abs_off_diag``.

    Raises:
        ValueError: ``c_reduction`` is not one of ``C_REDUCTIONS``.
    """
    if c_reduction not in C_REDUCTIONS:
        raise ValueError(f"c_reduction={c_reduction!r} is not supported; use one of "
                         f"{C_REDUCTIONS}.")
    d = z1.shape[1]
    if (c_reduction == "gather" and axis_name is not None
            and d % lax.axis_size(axis_name) == 0):
        z1n = batch_normalize(z1.astype(jnp.float32), axis_name)
        z2n = batch_normalize(z2.astype(jnp.float32), axis_name)
        return _metrics(*_terms_gathered(z1n, z2n, axis_name), d, lambd)
    return _loss_from_c(cross_correlation(z1, z2, axis_name), lambd)


def c_top_left(z1, z2, axis_name: Optional[str] = None, size: int = C_BLOCK):
    """C[:size, :size] (no gradient): the picture TensorBoard shows, a size^2 all-reduce."""
    z1, z2 = z1[:, :size].astype(jnp.float32), z2[:, :size].astype(jnp.float32)
    return lax.stop_gradient(cross_correlation(z1, z2, axis_name))


def method_loss(out1, out2, tgt1, tgt2, loss_config, axis_name):
    """The registry adapter; its metrics also carry ``c_block``, C[:64, :64] (not a scalar).

    Args:
        out1: the online network's outputs for view 1 (its projection ``z`` is used).
        out2: the same for view 2.
        tgt1: unused (Barlow Twins has no target network).
        tgt2: unused.
        loss_config: ``config.loss``: ``lambd``, and ``c_reduction`` ('gather'
            when absent), which picks how C is formed.
        axis_name: the mapped device axis for global-batch statistics, or None.

    Returns:
        (loss, metrics): ``barlow_twins``'s, with ``c_block`` added to the metrics.
    """
    del tgt1, tgt2
    loss, metrics = barlow_twins(out1["z"], out2["z"], lambd=loss_config.lambd,
                                 axis_name=axis_name,
                                 c_reduction=getattr(loss_config, "c_reduction", "gather"))
    metrics["c_block"] = c_top_left(out1["z"], out2["z"], axis_name)
    return loss, metrics


# What the training loop shows of this method (methods/__init__.py, telemetry.py).
PROGRESS_KEYS = (("on_diag", "{:.3f}"), ("off_diag", "{:.3f}"))
PICTURES = (Picture("cross_correlation_vs_identity", "c_block", c_matrix_image),)


def warnings(metrics: Mapping) -> List[str]:
    """Barlow Twins' own warnings for logged metrics; [] when healthy.

    * on_diag / off_diag not finite;
    * mean_abs_off_diag > 0.5: off-diagonal |C_ij| far from the 0 the loss
      asks for, the embedding dimensions are redundant.
    """
    out: List[str] = []
    values = {k: float(np.asarray(metrics[k])) for k in ("on_diag", "off_diag",
                                                          "mean_abs_off_diag") if k in metrics}
    for key in ("on_diag", "off_diag"):
        if key in values and not math.isfinite(values[key]):
            out.append(f"{key} is {values[key]}: training has diverged; lower the learning rate "
                       f"or use float32 compute.")
    off = values.get("mean_abs_off_diag")
    if off is not None and math.isfinite(off) and off > MEAN_ABS_OFF_DIAG_HIGH:
        out.append(f"mean_abs_off_diag={off:.3g} > {MEAN_ABS_OFF_DIAG_HIGH}: the "
                   f"embedding dimensions are strongly correlated across views.")
    return out
