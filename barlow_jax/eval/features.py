"""Labelled evaluation sets and their embedding by a frozen network, sharded over a mesh.

``load_labelled`` reads a split once with the test-time preprocessing
(``barlow_jax.data.eval_batches(mode='test')``: resize + centre crop at
224, the identity on 32-pixel images) and keeps it in host memory as uint8
``[N, H, W, 3]`` plus int32 labels. Small images already at the image size
come straight from ``data.load_eval_arrays`` (for folders: decoded once into
the data cache and memory-mapped, so a subset costs only its own rows);
otherwise the float32 normalised batches are mapped back with
``round((x * std + mean) * 255)``, exact for images that were not
resampled, within half a grey level after a resize. uint8 keeps a CIFAR-10
train+test copy at 184 MB (float32 would need 737 MB).

``Embedder`` runs the backbone (or the whole SSLNet) in inference mode, BN
with running statistics, on fixed-size global batches split over the mesh
axis ``data``: the last batch is padded with zeros and the padded rows are
dropped from the output, so one compilation serves every batch and the
result does not depend on the device count. uint8 images are normalised on
the device with ``config.data.mean/std``.

Multi-process: every process reads the whole split (``eval_batches`` with
process_count=1) and passes the same host arrays; each places only its own
devices' rows, and the outputs are replicated. Simple and correct; reading
only a process's share would be faster on large multi-host runs.
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from barlow_jax import parallel
from barlow_jax.data import normalize
from barlow_jax.models import build_backbone, build_ssl_net

SMALL_IMAGE = 64  # data.eval_batches resizes larger images to 256/224 of the size + crops


class LabelledSet(NamedTuple):
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int32 [N]


def subset_indices(n: int, max_examples: int, seed: int) -> np.ndarray:
    """Sorted seeded random subset of range(n) of size max_examples (0 = all)."""
    if max_examples <= 0 or max_examples >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_examples, replace=False))


def eval_stream(data_config, split: str, *, batch_size: int, mode: str = "test",
                seed: int = 0, epoch: int = 0):
    """``data.eval_batches`` over the WHOLE split, on every process alike.

    float32 normalised {'image', 'label'} NumPy batches; mode 'test' (resize
    + centre crop, fixed order) or 'train' (random-resized-crop + flip,
    shuffled by (seed, epoch)).
    """
    from barlow_jax import data as data_lib
    return data_lib.eval_batches(data_config, split, batch_size=batch_size, mode=mode,
                                 seed=seed, epoch=epoch, process_index=0, process_count=1)


def _held_arrays(data_config, split: str):
    """(images, labels) from ``data.load_eval_arrays`` when that equals the test transform.

    For small images (<= 64 px, where the test transform only resizes to the
    image size) of in-memory or folder sources (decoded once into the data
    cache, memory-mapped) whose stored size already is ``image_size``;
    otherwise None and the split is streamed.
    """
    size = int(data_config.image_size)
    if size > SMALL_IMAGE or data_config.source == "tfds":
        return None
    from barlow_jax import data as data_lib
    images, labels = data_lib.load_eval_arrays(data_config, split)
    if tuple(images.shape[1:]) != (size, size, 3):
        return None
    return images, labels


def require_labels(labels, split: str) -> None:
    """One sentence when a split has no class labels (label -1: an unlabeled folder)."""
    if len(labels) and int(np.min(labels)) < 0:
        raise ValueError(f"Split {split!r} has no class labels (an unlabeled folder); kNN, "
                         f"linear probes and the online probe need a labelled split: put its "
                         f"images in <split>/<class>/ folders, or point config.data.split / "
                         f"eval_split (kNN train set: config.eval.knn_train_split) at "
                         f"labelled splits.")


def load_labelled(data_config, split: str, *, max_examples: int = 0, seed: int = 0,
                  batch_size: int = 256, indices: Optional[np.ndarray] = None) -> LabelledSet:
    """A labelled split (or a seeded random subset of it) as uint8 images.

    ``indices`` (sorted positions in the split's test-mode order) overrides
    ``max_examples``/``seed``. The split is read once, up to the last
    selected position.
    """
    from barlow_jax import data as data_lib
    held = _held_arrays(data_config, split)
    n = len(held[1]) if held is not None else int(data_lib.num_examples(data_config, split))
    if indices is None:
        indices = subset_indices(n, max_examples, seed)
    indices = np.asarray(indices)
    if len(indices) == 0:
        raise ValueError(f"Split {split!r} of config.data is empty; point config.data at a "
                         f"labelled split.")
    if held is not None:
        require_labels(held[1], split)
        return LabelledSet(np.asarray(held[0][indices]), np.asarray(held[1][indices], np.int32))
    images, labels, pos = [], [], 0
    last = int(indices[-1])
    for batch in eval_stream(data_config, split, batch_size=batch_size):
        b = len(batch["label"])
        lo, hi = np.searchsorted(indices, [pos, pos + b])
        if hi > lo:
            take = indices[lo:hi] - pos
            images.append(normalize.to_uint8(np.asarray(batch["image"])[take], data_config))
            labels.append(np.asarray(batch["label"], np.int32)[take])
        pos += b
        if pos > last:
            break
    if sum(len(x) for x in labels) != len(indices):
        raise ValueError(f"Split {split!r} yielded {pos} examples, fewer than the {n} that "
                         f"num_examples reports; rebuild the data cache (config.data.cache_dir).")
    require_labels(np.concatenate(labels), split)
    return LabelledSet(np.concatenate(images), np.concatenate(labels))


def backbone_variables(variables) -> Dict:
    """The backbone's {'params', 'batch_stats'} out of SSLNet variables."""
    return {"params": variables["params"]["backbone"],
            "batch_stats": variables.get("batch_stats", {}).get("backbone", {})}


class Embedder:
    """Inference-mode embeddings of host images, sharded over the mesh axis 'data'.

    Args:
      config: the pretraining config (model, projector, predictor, data).
      mesh: 1-D mesh with axis 'data'.
      batch_size: global batch per call, rounded up to a multiple of the
        device count.
    """

    def __init__(self, config, mesh: Mesh, *, batch_size: int = 256):
        n_dev = mesh.devices.size
        self.batch_size = -(-max(int(batch_size), 1) // n_dev) * n_dev
        self.mesh = mesh
        self.batch_sharding = parallel.batch_sharding(mesh)
        self.replicated = parallel.replicated(mesh)
        backbone = build_backbone(config)
        net = build_ssl_net(config)

        def prep(images):
            if images.dtype == jnp.uint8:
                return normalize.from_uint8(images, config.data)
            return images.astype(jnp.float32)

        def features(variables, images):
            out = backbone.apply(backbone_variables(variables), prep(images), train=False)
            return out.astype(jnp.float32)

        def embed(variables, images):
            return net.apply({"params": variables["params"],
                              "batch_stats": variables.get("batch_stats", {})},
                             prep(images), train=False)

        self._features = jax.jit(features, out_shardings=self.replicated)
        self._embed = jax.jit(embed, out_shardings=self.replicated)

    def place_variables(self, variables):
        """Replicates {'params', 'batch_stats'} on the mesh (no copy if already there).

        Args:
          variables: SSLNet variables ``{'params', ['batch_stats']}``, host or device arrays.

        Returns:
          ``{'params', 'batch_stats'}`` as replicated global arrays.
        """
        tree = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

        def place(x):
            if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(self.replicated, x.ndim):
                return x
            return parallel.host_to_global(np.asarray(x), self.replicated)

        return jax.tree.map(place, tree)

    def _apply(self, fn, variables, image_arrays):
        """fn over fixed-size, zero-padded chunks of each array; fetched one chunk late."""
        variables = self.place_variables(variables)
        b = self.batch_size
        outs, pending = [], None

        def fetch(item):
            result, m = item
            outs.append(jax.tree.map(lambda x: np.asarray(x)[:m], result))

        for images in image_arrays:
            for start in range(0, len(images), b):
                chunk = images[start:start + b]
                m = len(chunk)
                if m < b:
                    chunk = np.concatenate([chunk, np.zeros((b - m,) + chunk.shape[1:],
                                                            chunk.dtype)])
                result = fn(variables, parallel.host_to_global(chunk, self.batch_sharding))
                if pending is not None:  # the device works on this chunk meanwhile
                    fetch(pending)
                pending = (result, m)
        if pending is None:
            raise ValueError("No images to embed; the evaluation split is empty.")
        fetch(pending)
        return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)

    def features_of_batches(self, variables, batches) -> LabelledSet:
        """Features of an iterable of batches, embedded as they arrive.

        Args:
          variables: SSLNet variables ``{'params', ['batch_stats']}``.
          batches: iterable of ``{'image': [b, S, S, 3], 'label': [b]}``; the
            images uint8 or normalised float.

        Returns:
          ``LabelledSet(images=features float32 [N, F], labels=int32 [N])``.
        """
        labels = []

        def images():
            for batch in batches:
                labels.append(np.asarray(batch["label"], np.int32))
                yield np.asarray(batch["image"])

        feats = self._apply(self._features, variables, images())
        return LabelledSet(feats, np.concatenate(labels))

    def split_features(self, variables, data_config, split: str, *, max_examples: int = 0,
                       seed: int = 0) -> LabelledSet:
        """Features of a split (or a seeded subset) with the test-time preprocessing.

        A whole streamed split is embedded batch by batch without keeping its
        images; subsets and small held arrays go through ``load_labelled``.

        Args:
          variables: SSLNet variables ``{'params', ['batch_stats']}``.
          data_config: ``config.data`` of the run (source, path, image size).
          split: the split's name, e.g. 'test'.
          max_examples: size of a seeded random subset; 0 takes the whole split.
          seed: the subset's seed.

        Returns:
          ``LabelledSet(images=features float32 [N, F], labels=int32 [N])``;
          an unlabeled split raises ValueError.
        """
        if max_examples <= 0 and _held_arrays(data_config, split) is None:
            out = self.features_of_batches(
                variables, eval_stream(data_config, split, batch_size=self.batch_size))
            require_labels(out.labels, split)
            return out
        data = load_labelled(data_config, split, max_examples=max_examples, seed=seed,
                             batch_size=self.batch_size)
        return LabelledSet(self.features(variables, data.images), data.labels)

    def features(self, variables, images) -> np.ndarray:
        """Pooled backbone features of images (BN in inference mode).

        Args:
          variables: SSLNet variables ``{'params', ['batch_stats']}``.
          images: [N, S, S, 3] uint8 or normalised float images on the host.

        Returns:
          float32 [N, F] NumPy features.
        """
        return self._apply(self._features, variables, [np.asarray(images)])

    def embed(self, variables, images) -> Dict[str, np.ndarray]:
        """The whole SSLNet's outputs of images (BN in inference mode).

        Args:
          variables: SSLNet variables ``{'params', ['batch_stats']}``.
          images: [N, S, S, 3] uint8 or normalised float images on the host.

        Returns:
          ``{'features', 'z', ['p']}``: float32 NumPy arrays with N rows (the
          pooled features, the projection and, for predictor methods, the
          prediction).
        """
        return self._apply(self._embed, variables, [np.asarray(images)])
