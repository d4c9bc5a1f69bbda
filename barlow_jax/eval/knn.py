"""Weighted k-nearest-neighbour classification of frozen features (kNN monitor).

The rule of Wu et al. (2018, "Unsupervised feature learning via
non-parametric instance discrimination", InstDisc), as solo-learn's
``WeightedKNNClassifier`` and lightly's ``knn_predict`` implement it:

    f  <- f / max(||f||_2, 1e-12)                 train and test features
    s_j = <f_test, f_train_j>                      cosine similarity
    N_k = the k train examples with the largest s_j
    score_c = sum_{j in N_k, y_j = c} exp(s_j / T)
    prediction = classes ranked by score (top-1, top-5)

Defaults k = 200, T = 0.1 (FIELD_NOTES §5). Accuracies are percentages.

The train features are sharded over the devices of the mesh axis ``data``
(each device holds a contiguous slice, padded rows masked with -inf); the
test set is processed in chunks of ``chunk_size`` rows, each chunk
replicated: every device finds the top-k of its slice, the candidates are
all-gathered and the global top-k is taken. Memory per device is about
``chunk_size * N_train / n_devices`` floats, whatever the test-set size.
Ties are broken towards the lower train index and the lower class index
(``lax.top_k`` is stable), so the result equals a brute-force NumPy
``argsort(-x, kind='stable')``.

``KnnMonitor`` is what the trainer calls every ``config.eval_every_steps``.
"""

from __future__ import annotations

import functools
import time
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from barlow_jax import parallel
from barlow_jax.eval import features as feats_lib
from barlow_jax.progress import Progress

AXIS = parallel.AXIS
TOPK_CLASSES = 5


def l2_normalize(x, eps: float = 1e-12) -> np.ndarray:
    """x / max(||x||, eps) along the last axis (torch.nn.functional.normalize), on the host."""
    x = np.asarray(x, np.float32)
    norm = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
    return x / np.maximum(norm, eps)


def _default_mesh() -> Mesh:
    return parallel.make_mesh()


@functools.lru_cache(maxsize=16)
def _chunk_fn(mesh: Mesh, k: int, num_classes: int, n_rank: int):
    """jit(shard_map) ranking one replicated test chunk against sharded train rows."""

    def local(train, labels, valid, test, temperature):
        sim = jnp.einsum("cd,nd->cn", test, train, precision=lax.Precision.HIGHEST)
        sim = jnp.where(valid[None, :], sim, -jnp.inf)
        k_local = min(k, train.shape[0])
        vals, idx = lax.top_k(sim, k_local)                       # [c, k_local]
        labs = labels[idx]
        vals = lax.all_gather(vals, AXIS, axis=1, tiled=True)     # device-major order
        labs = lax.all_gather(labs, AXIS, axis=1, tiled=True)
        vals, pos = lax.top_k(vals, k)
        labs = jnp.take_along_axis(labs, pos, axis=1)
        weights = jnp.where(jnp.isfinite(vals), jnp.exp(vals / temperature), 0.0)
        onehot = jax.nn.one_hot(labs, num_classes, dtype=jnp.float32)
        scores = jnp.einsum("ck,ckn->cn", weights, onehot, precision=lax.Precision.HIGHEST)
        return lax.top_k(scores, n_rank)[1]

    mapped = jax.shard_map(local, mesh=mesh,
                           in_specs=(P(AXIS), P(AXIS), P(AXIS), P(), P()),
                           out_specs=P(), check_vma=False)
    return jax.jit(mapped)


def knn_predict(train_feats, train_labels, test_feats, *, k: int = 200,
                temperature: float = 0.1, num_classes: int,
                chunk_size: int = 256, mesh: Optional[Mesh] = None) -> np.ndarray:
    """Classes ranked by weighted kNN vote, int32 [N_test, min(5, num_classes)].

    Args:
      train_feats: [N_train, D] features (any scale; normalised here).
      train_labels: int [N_train] in [0, num_classes).
      test_feats: [N_test, D].
      k: neighbours (clipped to N_train).
      temperature: T in exp(sim / T).
      num_classes: number of classes C.
      chunk_size: test rows per device call (bounds memory).
      mesh: 1-D mesh with axis 'data' (default: all devices).

    Returns:
      int32 [N_test, min(5, num_classes)]: the classes of each test row, most
      voted first (the input of ``knn_accuracy``).
    """
    train_feats = np.asarray(train_feats, np.float32)
    test_feats = np.asarray(test_feats, np.float32)
    train_labels = np.asarray(train_labels, np.int32)
    if train_feats.ndim != 2 or test_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"kNN needs [N, D] train and test features of the same D; got "
                         f"{train_feats.shape} and {test_feats.shape}.")
    if len(train_feats) == 0 or len(train_labels) != len(train_feats):
        raise ValueError(f"kNN needs a non-empty train set with one label per row; got "
                         f"{len(train_feats)} rows and {len(train_labels)} labels.")
    if train_labels.min() < 0 or train_labels.max() >= num_classes:
        raise ValueError(f"Train labels must lie in [0, {num_classes}); got "
                         f"[{train_labels.min()}, {train_labels.max()}]: set num_classes.")
    mesh = mesh if mesh is not None else _default_mesh()
    n_dev = mesh.devices.size
    k = int(min(k, len(train_feats)))
    n_rank = min(TOPK_CLASSES, num_classes)

    n_train = len(train_feats)
    pad = (-n_train) % n_dev
    valid = np.concatenate([np.ones(n_train, bool), np.zeros(pad, bool)])
    sharded = parallel.batch_sharding(mesh)
    put = lambda x: parallel.host_to_global(x, sharded)
    train_dev = put(l2_normalize(np.pad(train_feats, ((0, pad), (0, 0)))))
    labels_dev = put(np.pad(train_labels, (0, pad)))
    valid_dev = put(valid)
    fn = _chunk_fn(mesh, k, int(num_classes), n_rank)

    out = np.zeros((len(test_feats), n_rank), np.int32)
    repl = parallel.replicated(mesh)
    temp = parallel.host_to_global(np.float32(temperature), repl)
    for start in range(0, len(test_feats), chunk_size):
        chunk = test_feats[start:start + chunk_size]
        n = len(chunk)
        chunk = np.pad(chunk, ((0, chunk_size - n), (0, 0)))
        chunk = l2_normalize(chunk)
        ranked = fn(train_dev, labels_dev, valid_dev, parallel.host_to_global(chunk, repl), temp)
        out[start:start + n] = np.asarray(ranked)[:n]
    return out


def knn_accuracy(ranked: np.ndarray, labels) -> Dict[str, float]:
    """Top-1 / top-5 accuracy from ``knn_predict``'s ranking.

    Args:
      ranked: ``knn_predict``'s int [N, <=5] ranked classes.
      labels: the true int labels [N].

    Returns:
      ``{'top1', 'top5'}`` in percent.
    """
    labels = np.asarray(labels)
    if len(labels) != len(ranked):
        raise ValueError(f"Got {len(ranked)} predictions for {len(labels)} labels.")
    hit = ranked == labels[:, None]
    return {"top1": float(100.0 * np.mean(hit[:, 0])),
            "top5": float(100.0 * np.mean(np.any(hit[:, :TOPK_CLASSES], axis=1)))}


class KnnMonitor:
    """kNN accuracy of the backbone's features, cheap enough to run while training.

    Built once: it loads a labelled subset of ``config.data.split``
    (``config.eval.knn_train_examples`` images, 0 = all) and of
    ``config.data.eval_split`` (``config.eval.knn_test_examples``, 0 = all)
    with the test-time preprocessing, keeps them in host memory as uint8,
    and prints what that cost. ``evaluate(variables)`` embeds both sets with
    the backbone in inference mode (BN running statistics), sharded over
    the mesh, and returns ``{'knn_top1', 'knn_top5', 'knn_seconds'}``
    (percent, percent, wall seconds including the first call's compile).

    Every process must build the monitor (all processes load the same
    subsets and run the same computation; the result is replicated).
    """

    def __init__(self, config, mesh: Mesh, *, log: Callable[[str], None] = print):
        start = time.perf_counter()
        ec, dc = config.eval, config.data
        self.config = config
        self.mesh = mesh
        self.k = int(ec.knn_k)
        self.temperature = float(ec.knn_temperature)
        self.train_split = ec.get("knn_train_split", "") or dc.split
        self.train_set = feats_lib.load_labelled(
            dc, self.train_split, max_examples=int(ec.knn_train_examples), seed=int(config.seed),
            batch_size=int(ec.batch_size))
        self.test_set = feats_lib.load_labelled(
            dc, dc.eval_split, max_examples=int(ec.knn_test_examples), seed=int(config.seed) + 1,
            batch_size=int(ec.batch_size))
        labels_max = max(int(self.train_set.labels.max()), int(self.test_set.labels.max()))
        self.num_classes = max(int(dc.get("num_classes", 0) or 0), labels_max + 1)
        self.embedder = feats_lib.Embedder(config, mesh, batch_size=int(ec.batch_size))
        self.progress_stream = None  # stdout; tests may redirect it
        seconds = time.perf_counter() - start
        mib = (self.train_set.images.nbytes + self.test_set.images.nbytes) / 2 ** 20
        log(f"kNN monitor: {len(self.train_set.labels)} train images ({self.train_split}) and "
            f"{len(self.test_set.labels)} test images ({dc.eval_split}), k={self.k}, "
            f"T={self.temperature}; loaded in {seconds:.1f}s, {mib:.0f} MiB host memory.")

    def evaluate(self, variables, probe=None) -> Dict[str, float]:
        """kNN accuracy of the backbone of ``variables`` on the loaded sets.

        Args:
          variables: ``{'params': SSLNet params, 'batch_stats': SSLNet batch_stats}``.
          probe: the online linear probe (``{'params', ...}``, TrainState.probe)
            or None; when given, its top-1 on the same test features is added.

        Returns:
          ``{'knn_top1', 'knn_top5', ['online_test_top1'], 'knn_seconds'}``:
          percentages and the wall seconds of the call.
        """
        start = time.perf_counter()
        train_f, test_f = self._features(variables)
        ranked = knn_predict(train_f, self.train_set.labels, test_f, k=self.k,
                             temperature=self.temperature, num_classes=self.num_classes,
                             mesh=self.mesh)
        acc = knn_accuracy(ranked, self.test_set.labels)
        out = {"knn_top1": acc["top1"], "knn_top5": acc["top5"]}
        if probe is not None:
            from barlow_jax.online_probe import test_top1
            out["online_test_top1"] = test_top1(probe["params"], test_f, self.test_set.labels)
        out["knn_seconds"] = time.perf_counter() - start
        return out

    def _features(self, variables):
        """Features of the train and test sets, in slices so that progress can be shown.

        Slices are whole multiples of the embedder's batch, so the result is the
        one of a single ``features`` call (``Progress`` prints only when it takes
        longer than a couple of seconds).
        """
        sets = (self.train_set.images, self.test_set.images)
        total = sum(len(x) for x in sets)
        step = self.embedder.batch_size * max(1, total // (20 * self.embedder.batch_size))
        out = []
        with Progress("kNN: embedding train + test images", total=total, unit="images",
                      stream=self.progress_stream, summary=False) as progress:
            for images in sets:
                parts = []
                for start in range(0, len(images), step):
                    parts.append(self.embedder.features(variables, images[start:start + step]))
                    progress.update(len(parts[-1]))
                out.append(np.concatenate(parts))
        return out
