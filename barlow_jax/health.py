"""Collapse diagnostics of the embeddings, computed inside the training step.

``embedding_health(z, axis_name=...)`` is pure JAX; under ``shard_map`` it
reduces over the mapped axis so every device returns the statistics of the
GLOBAL batch (Z = all devices' rows, N x D):

* ``embed_std_min`` / ``embed_std_mean``: min and mean over dimensions of
  the per-dimension standard deviation over the batch,
  std_d = sqrt(mean_n (z_nd - mean_n z_nd)^2) (biased, like BT's BN). A
  dimension whose std is ~0 is dead; all of them ~0 is complete collapse
  (SimSiam, Chen & He 2021, §4 uses the same signal).
* ``embed_eff_rank``: effective rank (Roy & Vetterli 2007; RankMe, Garrido
  et al. 2023) of the centred matrix Zc = Z - mean:
      sigma = singular values of Zc, p_i = sigma_i / sum_j sigma_j,
      erank = exp(-sum_i p_i log p_i)            (1 <= erank <= rank Zc)
  Computed from the D x D scatter matrix S = Zc^T Zc (psum over devices):
  sigma_i = sqrt(lambda_i(S)). float32 eigenvalues carry noise of about
  eps * lambda_max, so eigenvalues below lambda_max * max(D, N) * eps_f32
  are treated as 0 (the rank-tolerance rule of ``numpy.linalg.matrix_rank``
  applied to S); directions weaker than sqrt(max(D, N) * eps) * sigma_max
  (0.3% at D = 64, 3% at D = 8192) do not count.
* ``embed_rank_frac``: erank / min(D, N - 1), the largest rank Zc can have.

Cost: the scatter matrix is N*D^2 multiply-adds and a D x D all-reduce, the
eigenvalues O(D^3) on every device. Measured on this project's 2-core CPU:
see docs/evaluation.md. Two limits keep it small:

* ``effective_rank=<traced bool>`` (e.g. "this step is logged") computes it
  only then: on the other steps the two rank entries are -1 (a "not
  computed" marker that is finite, so NaN guards stay quiet).
* ``rank_dims=K``: when D > K the rank is that of the K evenly spaced
  coordinates d = floor(i D / K), i < K (a fixed sample, the same every
  step): a K x K all-reduce and a K x K eigen-decomposition, whatever D and
  the device count. Projecting onto coordinates cannot raise the rank, so a
  collapse to r < K dimensions still shows (erank <= r); the fraction is
  erank / min(K, N - 1). ``embed_std_*`` always use all D dimensions.
  The training step passes ``config.step.health_rank_dims`` (2048: exact
  for projectors up to 2048 wide, 8192 -> 2048 for Barlow Twins' 8192:
  a 16 MB instead of 268 MB all-reduce and a 64x cheaper eigvalsh).

``collapse_warnings(metrics, method)`` turns logged values into readable
warnings, the method's own (``Method.warnings``) included.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from barlow_jax.parallel import batch_mean, global_sum

NOT_COMPUTED = -1.0

# Thresholds of collapse_warnings (heuristics; see its docstring).
STD_DEAD_RATIO = 1e-3      # embed_std_min < this * embed_std_mean: a dead dimension
STD_COLLAPSED = 1e-6       # embed_std_mean below this: constant embeddings
RANK_FRACTION_LOW = 0.01   # embed_rank_frac below this: dimensional collapse


def effective_rank_from_scatter(s, n_global):
    """(erank, erank / min(D, N-1)) of Zc from its scatter matrix S = Zc^T Zc (D x D)."""
    d = s.shape[0]
    lam = jnp.linalg.eigvalsh(0.5 * (s + s.T))
    lam_max = jnp.max(lam)
    tol = lam_max * max(d, 1) * jnp.finfo(jnp.float32).eps
    tol = jnp.maximum(tol, lam_max * n_global * jnp.finfo(jnp.float32).eps)
    sigma = jnp.sqrt(jnp.where(lam > tol, lam, 0.0))
    total = jnp.sum(sigma)
    p = sigma / jnp.where(total > 0, total, 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    erank = jnp.where(total > 0, jnp.exp(entropy), 0.0)
    max_rank = jnp.maximum(jnp.minimum(float(d), n_global - 1.0), 1.0)
    return erank, erank / max_rank


def rank_sample(d: int, rank_dims: Optional[int]) -> Optional[np.ndarray]:
    """The coordinates the rank is computed on: None (all) or floor(i d / K), i < K."""
    if not rank_dims or rank_dims <= 0 or d <= rank_dims:
        return None
    return (np.arange(rank_dims) * d) // rank_dims


def embedding_health(z, *, axis_name: Optional[str] = None,
                     effective_rank: Union[bool, jax.Array] = True,
                     rank_dims: Optional[int] = None) -> Dict[str, jax.Array]:
    """Collapse statistics of embeddings z [N_local, D] over the global batch.

    Args:
      z: embeddings (any float dtype; computed in float32). Under shard_map
        every device holds the same number of rows.
      axis_name: mapped device axis, or None for a single array.
      effective_rank: True / False, or a traced boolean scalar (replicated
        across devices) deciding at run time; when False the rank entries
        are -1.
      rank_dims: compute the rank on at most this many dimensions (module
        doc); None or 0: all of them.

    Returns float32 scalars embed_std_min, embed_std_mean, embed_eff_rank,
    embed_rank_frac (identical on every device).
    """
    z = lax.stop_gradient(z).astype(jnp.float32)
    n_local = z.shape[0]
    n_global = global_sum(jnp.float32(n_local), axis_name)
    zc = z - batch_mean(z, axis_name)
    std = jnp.sqrt(batch_mean(zc * zc, axis_name))
    out = {"embed_std_min": jnp.min(std), "embed_std_mean": jnp.mean(std)}

    sample = rank_sample(z.shape[1], rank_dims)

    def rank():
        zs = zc if sample is None else zc[:, sample]
        s = global_sum(jnp.einsum("nd,ne->de", zs, zs, precision=lax.Precision.HIGHEST),
                       axis_name)
        return effective_rank_from_scatter(s, n_global)

    def skip():
        return jnp.float32(NOT_COMPUTED), jnp.float32(NOT_COMPUTED)

    if isinstance(effective_rank, (bool, np.bool_)):
        if not effective_rank:
            return out
        erank, frac = rank()
    else:
        erank, frac = lax.cond(jnp.asarray(effective_rank, bool), rank, skip)
    out["embed_eff_rank"] = erank
    out["embed_rank_frac"] = frac
    return out


def _value(metrics: Mapping, key: str) -> Optional[float]:
    if key not in metrics:
        return None
    try:
        return float(np.asarray(metrics[key]))
    except (TypeError, ValueError):
        return None


def collapse_warnings(metrics: Mapping, method=None) -> List[str]:
    """Readable warnings for logged metrics (python floats or arrays); [] when healthy.

    Rules (heuristics, thresholds are the module constants):
      * any of loss / embed_* not finite;
      * embed_std_mean < 1e-6: all embeddings (nearly) identical;
      * embed_std_min < 1e-3 * embed_std_mean: at least one dead dimension;
      * 0 <= embed_rank_frac < 0.01, or embed_eff_rank < 2 where a rank above
        2 is possible:
        the embeddings span a tiny subspace (dimensional collapse);
      * then ``method.warnings(metrics)`` (a ``methods.Method``), e.g. Barlow
        Twins' mean_abs_off_diag > 0.5.
    Values equal to -1 (not computed) are ignored.
    """
    warnings: List[str] = []
    for key in ("loss", "embed_std_min", "embed_std_mean", "embed_eff_rank",
                "embed_rank_frac"):
        v = _value(metrics, key)
        if v is not None and not math.isfinite(v):
            warnings.append(f"{key} is {v}: training has diverged; lower the learning rate or "
                            f"use float32 compute.")
    std_mean, std_min = _value(metrics, "embed_std_mean"), _value(metrics, "embed_std_min")
    if std_mean is not None and math.isfinite(std_mean) and std_mean < STD_COLLAPSED:
        warnings.append(f"embed_std_mean={std_mean:.3g}: the embeddings are (nearly) constant "
                        f"over the batch, complete collapse.")
    elif (std_min is not None and std_mean is not None and math.isfinite(std_min)
          and std_min < STD_DEAD_RATIO * std_mean):
        warnings.append(f"embed_std_min={std_min:.3g} is below {STD_DEAD_RATIO:g} x "
                        f"embed_std_mean={std_mean:.3g}: at least one embedding dimension is "
                        f"dead (constant over the batch).")
    frac, erank = _value(metrics, "embed_rank_frac"), _value(metrics, "embed_eff_rank")
    max_rank = erank / frac if (erank is not None and frac) else 0.0
    if frac is not None and frac != NOT_COMPUTED and math.isfinite(frac) and (
            frac < RANK_FRACTION_LOW or (0 <= erank < 2.0 and max_rank > 2.0)):
        warnings.append(f"embed_eff_rank={erank:.3g} ({100 * frac:.2f}% of the possible rank): "
                        f"the embeddings span a tiny subspace (dimensional collapse).")
    if method is not None:
        warnings += method.warnings(metrics)
    return warnings
