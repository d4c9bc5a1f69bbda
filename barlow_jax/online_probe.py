"""Online linear probe: a linear classifier on stop-gradient backbone features,
trained inside the pretraining step on the labels the pipeline carries.

solo-learn and lightly report this "online" accuracy beside the kNN monitor.
The probe sees the pooled backbone features of view 1 (training-mode forward
pass, augmented images) through ``lax.stop_gradient``, has its own optimizer
(``config.online_probe``: SGD with momentum or Adam, own learning rate and
weight decay) and its own params/opt state in ``TrainState.probe``. Nothing
flows back into the backbone: its update is bit-identical with the probe on
or off (tests/test_online_probe.py).

Inside ``shard_map`` each device holds its slice of the batch. The loss is
``sum(local CE of labelled rows) / psum(labelled rows)``, so the gradient
that ``shard_map`` sums over devices for the replicated probe params is the
global-batch mean gradient. Rows with label < 0 (unlabeled folders) are
masked out. Logged: ``online_loss`` and ``online_top1`` (percent, on the
train batch); ``KnnMonitor`` adds ``online_test_top1`` on the test split.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from barlow_jax.parallel import global_sum


def enabled(config) -> bool:
    return bool(config.get("online_probe", {}).get("enabled", False))


def check_training_labels(config) -> None:
    """One sentence when the training split is an unlabeled folder (every label -1)."""
    if config.data.source != "folder":
        return
    from barlow_jax.data import folder
    labels = folder.index_split(config.data, config.data.split).labels
    if len(labels) and int(np.max(labels)) < 0:
        raise ValueError(f"config.online_probe.enabled needs class labels on the training "
                         f"split, and {config.data.split!r} is an unlabeled folder: set "
                         f"--config.online_probe.enabled=False (or use <split>/<class>/ "
                         f"folders).")


def probe_tx(pc) -> optax.GradientTransformation:
    """The probe's optimizer from ``config.online_probe``."""
    name = str(pc.optimizer).lower()
    if name == "sgd":
        tx = optax.sgd(float(pc.lr), momentum=float(pc.momentum) or None)
    elif name == "adam":
        tx = optax.adam(float(pc.lr))
    else:
        raise ValueError(f"config.online_probe.optimizer={pc.optimizer!r} is not one of "
                         f"'sgd', 'adam'; pick one of them.")
    if float(pc.weight_decay) > 0:
        tx = optax.chain(optax.add_decayed_weights(float(pc.weight_decay)), tx)
    return tx


def num_classes(config) -> int:
    n = int(config.data.get("num_classes", 0) or 0)
    if n <= 0:
        raise ValueError("config.online_probe.enabled needs config.data.num_classes > 0 "
                         "(the number of classes of the training split).")
    return n


def init_probe(config, num_features: int, tx) -> Dict[str, Any]:
    """{'params': {'kernel' [F, C], 'bias' [C]}, 'opt_state'}: zero-initialised."""
    c = num_classes(config)
    params = {"kernel": jnp.zeros((num_features, c), jnp.float32),
              "bias": jnp.zeros((c,), jnp.float32)}
    return {"params": params, "opt_state": tx.init(params)}


def logits(params, feats):
    return jnp.dot(feats.astype(jnp.float32), params["kernel"],
                   precision=lax.Precision.HIGHEST) + params["bias"]


def batch_labels(batch, device_data):
    """The step's labels: the host batch's 'label', or the device dataset's rows at 'idx'.

    Inside the step ``device_data['labels']`` is this device's copy, [1, N].
    """
    if "label" in batch:
        return batch["label"]
    if device_data is not None and "labels" in device_data and "idx" in batch:
        return device_data["labels"][0][batch["idx"]]
    raise ValueError("config.online_probe.enabled needs labels in the training batches; this "
                     "pipeline carries none: set --config.online_probe.enabled=False.")


def probe_update(probe, feats, labels, tx, *, axis_name: Optional[str]):
    """One probe step on (local) stop-gradient features; returns (new_probe, metrics)."""
    feats = lax.stop_gradient(feats).astype(jnp.float32)
    labels = labels.astype(jnp.int32)
    mask = (labels >= 0).astype(jnp.float32)
    count = jnp.maximum(global_sum(jnp.sum(mask), axis_name), 1.0)

    def loss_fn(params):
        lg = logits(params, feats)
        ce = optax.softmax_cross_entropy_with_integer_labels(lg, jnp.maximum(labels, 0))
        return jnp.sum(ce * mask) / count, lg

    (loss, lg), grads = jax.value_and_grad(loss_fn, has_aux=True)(probe["params"])
    updates, opt_state = tx.update(grads, probe["opt_state"], probe["params"])
    params = optax.apply_updates(probe["params"], updates)
    hits = jnp.sum((jnp.argmax(lg, axis=-1) == labels).astype(jnp.float32) * mask)
    metrics = {"online_loss": global_sum(loss, axis_name),
               "online_top1": 100.0 * global_sum(hits, axis_name) / count}
    return {"params": params, "opt_state": opt_state}, metrics


def test_top1(params, feats, labels) -> float:
    """Top-1 (percent) of the probe on host features (the kNN monitor's test pass)."""
    params = jax.tree.map(np.asarray, params)
    lg = np.asarray(feats, np.float32) @ params["kernel"] + params["bias"]
    return float(100.0 * np.mean(np.argmax(lg, axis=-1) == np.asarray(labels)))
