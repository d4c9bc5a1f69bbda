"""The optimisation maths of the linear probe and fine-tuning (BT evaluate.py).

* ``sgd_update``: torch.optim.SGD (momentum, no dampening, no Nesterov,
  coupled weight decay on every parameter, as BT evaluate.py uses it):
      d = g + wd * p;  buf = m * buf + d;  p = p - lr * buf
  with the learning rate applied after momentum, so a per-epoch change of
  lr behaves as in PyTorch.
* ``cosine_lr``: ``CosineAnnealingLR(T_max=epochs)`` stepped once per
  epoch (BT evaluate.py): lr_e = base * (1 + cos(pi * e / epochs)) / 2 for
  epoch e = 0 .. epochs-1, constant within an epoch.
* ``masked_cross_entropy`` / ``topk_correct``: loss and top-1 / top-5 hit
  counts over the real rows of a padded batch.
* ``padded_batches`` / ``pad_batch``: batches padded to a multiple of the
  device count, with a mask of the real rows.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

TOPK = (1, 5)


def sgd_update(params, buf, grads, lr, *, momentum: float, weight_decay: float):
    """One torch-SGD step; ``lr`` is a scalar or a pytree of scalars like params."""
    if not isinstance(lr, dict):
        lr = jax.tree.map(lambda _: lr, params)
    d = jax.tree.map(lambda g, p: g + weight_decay * p, grads, params)
    buf = jax.tree.map(lambda b, x: momentum * b + x, buf, d)
    params = jax.tree.map(lambda p, b, r: p - r * b, params, buf, lr)
    return params, buf


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    return 0.5 * base * (1.0 + math.cos(math.pi * epoch / epochs))


def masked_cross_entropy(logits, labels, mask):
    """Mean cross-entropy over the rows where mask is 1 (padding rows are 0)."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def topk_correct(logits, labels, mask=None) -> jax.Array:
    """[2] counts of rows whose label is in the top-1 / top-5 logits (ties: lower index)."""
    k = min(TOPK[-1], logits.shape[-1])
    top = jax.lax.top_k(logits, k)[1]
    hit = top == labels[:, None]
    m = jnp.ones(labels.shape, jnp.float32) if mask is None else mask
    return jnp.stack([jnp.sum(hit[:, 0] * m), jnp.sum(jnp.any(hit, axis=1) * m)])


def padded_size(batch_size: int, n_dev: int) -> int:
    """``batch_size`` rounded up to a multiple of ``n_dev``."""
    return -(-batch_size // n_dev) * n_dev


def padded_batches(n: int, batch_size: int, n_dev: int, order: Optional[np.ndarray] = None):
    """Yields (indices [B_pad], mask [B_pad]) covering ``order`` (default range(n)).

    Every batch has ``batch_size`` real rows except the last (as a PyTorch
    DataLoader with drop_last=False) and is padded with index 0 / mask 0 to
    B_pad = batch_size rounded up to a multiple of ``n_dev``, so one
    compilation serves all batches.
    """
    order = np.arange(n) if order is None else order
    b_pad = padded_size(batch_size, n_dev)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        mask = np.zeros(b_pad, np.float32)
        mask[:len(idx)] = 1.0
        yield np.concatenate([idx, np.zeros(b_pad - len(idx), idx.dtype)]), mask


def pad_batch(batch: Dict[str, np.ndarray], b_pad: int) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Pads a streamed {'image', 'label'} batch to b_pad rows; returns (batch, mask)."""
    n = len(batch["label"])
    if n > b_pad:
        raise ValueError(f"A data batch has {n} rows, more than the {b_pad} requested.")
    mask = np.zeros(b_pad, np.float32)
    mask[:n] = 1.0
    out = {k: np.concatenate([np.asarray(v), np.zeros((b_pad - n,) + np.shape(v)[1:],
                                                      np.asarray(v).dtype)])
           for k, v in batch.items()}
    return out, mask
