"""SimCLR (Chen et al., 2020): the NT-Xent / InfoNCE contrastive loss.

For a global batch of N pairs, h = z / ||z|| (float32) and the 2N anchors
(both views), the anchor a with positive pos(a) (same image, other view)
and candidates c != a (the other 2N - 1 embeddings, so 2N - 2 negatives):

    l(a) = -log( exp(h_a . h_pos(a) / T) / sum_{c != a} exp(h_a . h_c / T) )
    loss = (1 / 2N) sum_a l(a)

Reference: google-research/simclr ``objective.py`` (``add_contrastive_loss``):
``tf.math.l2_normalize``, logits against the embeddings concatenated from
all replicas, self-similarity removed by subtracting ``LARGE_NUM = 1e9``.
Convention: the official code returns ``loss_a + loss_b`` (the mean over
view-1 anchors plus the mean over view-2 anchors), i.e. 2x ``info_nce``,
which is the mean over all 2N anchors (the paper's definition). The registry
adapter multiplies by ``loss.simclr_loss_scale``: 2.0 (default, the official
scale) or 1.0 (solo-learn's). Scale matters for the parameters outside LARS's
trust ratio (biases, BN), for weight decay relative to the gradient, and for
the logged number.

BatchNorm: the official model runs once over the concatenated views
(``tf.concat`` of the two augmentations along the batch in ``run.py``), so
every BatchNorm of the backbone and projector normalises with statistics
over both views; the registry declares ``bn_views='joint'`` and the step
does the same (steps.py).

Distribution: each device builds the logits of its *local* anchors against
the *global* candidates gathered with ``lax.all_gather(..., tiled=True)``.
Under ``jax.shard_map`` the transpose of ``all_gather`` is a reduce-scatter,
so every candidate row receives the gradient from the anchors of all
devices; the per-anchor losses are summed with ``psum`` and divided by 2N.
Value and gradient equal the single-device, full-batch ones.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from barlow_jax.parallel import global_sum

LARGE_NUM = 1e9
NORM_EPS = 1e-12


def l2_normalize(x, axis: int = -1, eps: float = NORM_EPS):
    """x / ||x|| in float32 (tf.math.l2_normalize: x * rsqrt(max(sum x^2, eps))).

    Args:
        x: an array of any float dtype.
        axis: the axis along which to normalise.
        eps: lower bound of the squared norm (a zero vector stays zero).

    Returns:
        The float32 array of ``x``'s shape with unit norm along ``axis``.
    """
    x = x.astype(jnp.float32)
    return x * lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps))


def info_nce(z1, z2, *, temperature: float = 0.1,
             axis_name: Optional[str] = None) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """NT-Xent loss of two [N_local, D] embeddings (any float dtype); returns (loss, metrics).

    Row i of ``z1`` and row i of ``z2`` are the two views of one image. With
    ``axis_name`` (inside ``jax.shard_map`` over that axis, equal local
    batches) negatives come from every device and every device returns the
    same global loss.

    Args:
        z1: [N_local, D] embeddings of view 1.
        z2: [N_local, D] embeddings of view 2.
        temperature: the softmax temperature T (0.1 on ImageNet, 0.2-0.5 on CIFAR).
        axis_name: the mapped device axis for global-batch statistics, or None.

    Returns:
        (loss, metrics): the mean over the 2N anchors of their NT-Xent loss,
        and ``accuracy``, the fraction of the 2N anchors whose positive has
        the highest similarity among all 2N - 1 candidates.

    Raises:
        ValueError: the embeddings' shapes differ or are not [N, D], or a
            Python ``temperature`` is not positive.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"info_nce needs two [N, D] embeddings of the same shape; got "
                         f"{z1.shape} and {z2.shape}.")
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"temperature={temperature} must be positive; SimCLR uses 0.1 on "
                         f"ImageNet and 0.2-0.5 on CIFAR.")
    n = z1.shape[0]
    h1, h2 = l2_normalize(z1), l2_normalize(z2)
    if axis_name is not None:
        g1 = lax.all_gather(h1, axis_name, tiled=True)
        g2 = lax.all_gather(h2, axis_name, tiled=True)
        offset = lax.axis_index(axis_name) * n
    else:
        g1, g2, offset = h1, h2, 0
    n_global = g1.shape[0]

    anchors = jnp.concatenate([h1, h2], axis=0)        # [2n, D]: view 1 then view 2
    candidates = jnp.concatenate([g1, g2], axis=0)     # [2N, D]: same layout, global
    logits = jnp.einsum("ad,cd->ac", anchors, candidates,
                        precision=lax.Precision.HIGHEST) / temperature
    local = jnp.arange(n) + offset
    self_idx = jnp.concatenate([local, local + n_global])
    pos_idx = jnp.concatenate([local + n_global, local])
    is_self = jnp.arange(2 * n_global)[None, :] == self_idx[:, None]
    logits = jnp.where(is_self, -LARGE_NUM, logits)

    pos_logit = jnp.take_along_axis(logits, pos_idx[:, None], axis=1)[:, 0]
    per_anchor = jax.nn.logsumexp(logits, axis=1) - pos_logit
    correct = (jnp.argmax(logits, axis=1) == pos_idx).astype(jnp.float32)
    total, hits = jnp.sum(per_anchor), jnp.sum(correct)
    total, hits = global_sum((total, hits), axis_name)
    return total / (2 * n_global), {"accuracy": hits / (2 * n_global)}


def method_loss(out1, out2, tgt1, tgt2, loss_config, axis_name):
    """Registry adapter: ``loss.simclr_loss_scale`` x NT-Xent on the projector outputs ``z``.

    Args:
        out1: the online network's outputs for view 1 (its projection ``z`` is used).
        out2: the same for view 2.
        tgt1: unused (SimCLR has no target network).
        tgt2: unused.
        loss_config: ``config.loss``: ``temperature``, and ``simclr_loss_scale``
            (2.0 when absent: the official code's scale).
        axis_name: the mapped device axis for global-batch statistics, or None.

    Returns:
        (loss, metrics): ``info_nce``'s loss times the scale, and its metrics.
    """
    del tgt1, tgt2
    loss, metrics = info_nce(out1["z"], out2["z"], temperature=loss_config.temperature,
                             axis_name=axis_name)
    return loss * float(getattr(loss_config, "simclr_loss_scale", 2.0)), metrics
