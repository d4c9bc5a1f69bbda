"""Where examples come from: ``config.data.source`` -> an indexed or a streaming source.

* ``folder``: image files (``folder.py``), random access by index.
* ``arrays``: ``config.data.arrays = {'train': (images, labels), ...}`` in memory.
* ``synthetic``: learnable generated images (``synthetic.py``), no files, no TF.
* ``tfds``: a TensorFlow Datasets split read as a stream (``config.data.tfds_name``,
  ``tfds_data_dir``); images under the feature key 'image', labels under 'label'.

The first three give an ``IndexedSource`` (example i is addressable, so the
pipeline can permute, shard and resume by index); TFDS gives a
``TfdsSource`` read in order with a seeded shuffle buffer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from barlow_jax.data import folder
from barlow_jax.data.synthetic import make_synthetic

SOURCES = ("folder", "arrays", "synthetic", "tfds")


@dataclass
class IndexedSource:
    """N examples, example i = (``paths[i]`` or ``images[i]``, ``labels[i]``)."""
    labels: np.ndarray                     # int32 [N]
    paths: Optional[np.ndarray] = None     # absolute file paths (folder source)
    images: Optional[np.ndarray] = None    # uint8 [N, H, W, 3] (in-memory sources)
    skipped: int = 0                       # unreadable files left out of the index

    @property
    def num_examples(self) -> int:
        return len(self.labels)


@dataclass
class TfdsSource:
    name: str
    split: str
    num_examples: int
    skipped: int = 0


def _check_source(data_config) -> str:
    if data_config.source not in SOURCES:
        raise ValueError(f"config.data.source={data_config.source!r} is unknown; "
                         f"use one of {', '.join(SOURCES)}.")
    return data_config.source


def as_rgb_uint8(images, what: str) -> np.ndarray:
    """[N,H,W], [N,H,W,1] or [N,H,W,3] -> uint8 [N,H,W,3]."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"{what} must be uint8 images of shape [N, H, W, 3] (or grayscale "
                         f"[N, H, W]); got shape {images.shape}.")
    if images.dtype != np.uint8:
        raise ValueError(f"{what} must have dtype uint8 (pixels 0..255); got {images.dtype}.")
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _arrays(data_config, split):
    arrays = data_config.get("arrays") or {}
    if split not in arrays:
        raise ValueError(f"config.data.arrays has no {split!r} entry; set config.data.arrays = "
                         f"{{'{split}': (images_uint8, labels), ...}}.")
    images, labels = arrays[split]
    images = as_rgb_uint8(images, f"config.data.arrays[{split!r}] images")
    labels = np.asarray(labels, np.int32).reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"config.data.arrays[{split!r}] has {len(images)} images but "
                         f"{len(labels)} labels; give one label per image.")
    return images, labels


def _synthetic(data_config, split):
    n = data_config.num_examples if split == data_config.get("split", "train") else (
        data_config.get("num_eval_examples", 0) or data_config.num_examples)
    if n <= 0:
        raise ValueError("config.data.num_examples must be > 0 for the synthetic source.")
    return make_synthetic(n, data_config.image_size,
                          num_classes=data_config.get("num_classes", 10),
                          seed=data_config.get("synthetic_seed", 0),
                          split_seed=int(split != data_config.get("split", "train")))


def open_source(data_config, split: str, in_memory: bool = False):
    """The ``IndexedSource`` or ``TfdsSource`` of ``split``.

    ``in_memory``: always an ``IndexedSource`` with ``images`` set (folders are
    decoded once into the cache, TFDS splits decoded into memory).
    """
    source = _check_source(data_config)
    if source == "folder":
        index = folder.index_split(data_config, split)
        images = folder.decoded_arrays(data_config, split, index)[0] if in_memory else None
        return IndexedSource(labels=index.labels, paths=None if in_memory else index.paths,
                             images=images, skipped=len(index.skipped))
    if source == "tfds" and in_memory:
        images, labels = load_arrays(data_config, split)
        return IndexedSource(labels=labels, images=images)
    if source == "tfds":
        return TfdsSource(data_config.tfds_name, split, tfds_num_examples(data_config, split))
    images, labels = _arrays(data_config, split) if source == "arrays" else _synthetic(
        data_config, split)
    return IndexedSource(labels=labels, images=images)


def load_arrays(data_config, split: str):
    """(uint8 [N,H,W,3], int32 [N]) of a whole split in memory (folder: decoded once, cached)."""
    source = _check_source(data_config)
    if source == "folder":
        return folder.decoded_arrays(data_config, split)
    if source == "arrays":
        return _arrays(data_config, split)
    if source == "synthetic":
        return _synthetic(data_config, split)
    images, labels = [], []
    for image, label in tfds_dataset(data_config, split, decode=True).as_numpy_iterator():
        images.append(image)
        labels.append(label)
    if len({im.shape for im in images}) > 1:
        raise ValueError(f"TFDS {data_config.tfds_name}:{split} has images of several sizes; "
                         f"in-memory use (placement 'device', load_eval_arrays) needs one size.")
    return as_rgb_uint8(np.stack(images), "TFDS images"), np.asarray(labels, np.int32)


def num_examples(data_config, split: str) -> int:
    """Number of usable examples in ``split`` (unreadable files excluded)."""
    source = _check_source(data_config)
    if source == "tfds":
        return tfds_num_examples(data_config, split)
    if source == "folder":
        return folder.index_split(data_config, split).num_examples
    return len(load_arrays(data_config, split)[1])


# ----------------------------------------------------------------- TFDS

def tfds_dataset(data_config, split: str, decode: bool):
    """tf.data of (image, label): uint8 [H,W,3] if ``decode`` else the encoded bytes."""
    from barlow_jax.data.tensorflow_env import import_tensorflow
    tf = import_tensorflow()
    import tensorflow_datasets as tfds
    if not data_config.get("tfds_name"):
        raise ValueError("config.data.tfds_name is empty; set it (e.g. 'cifar10') for "
                         "config.data.source='tfds'.")
    data_dir = data_config.get("tfds_data_dir") or None
    builder = tfds.builder(data_config.tfds_name, data_dir=data_dir)
    decoders = None if decode else {"image": tfds.decode.SkipDecoding()}
    try:
        ds = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
    except (AssertionError, tfds.core.registered.DatasetNotFoundError) as e:
        raise FileNotFoundError(
            f"TFDS dataset {data_config.tfds_name!r} split {split!r} is not prepared in "
            f"{data_dir or 'the default TFDS data dir'}; run `tfds build "
            f"{data_config.tfds_name} --data_dir=...` first ({e}).") from e

    def pick(ex):
        image = ex["image"]
        if decode and image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        return image, tf.cast(ex["label"], tf.int32)

    return ds.map(pick)


def tfds_process_split(split: str, process_index: int, process_count: int):
    """This process's slice of ``split`` (``tfds.even_splits``: the first N mod P slices
    have one example more), so each host reads only its own records."""
    if process_count == 1:
        return split
    from barlow_jax.data.tensorflow_env import import_tensorflow
    import_tensorflow()
    import tensorflow_datasets as tfds
    return tfds.even_splits(split, n=process_count)[process_index]


def tfds_slice_start(n: int, process_index: int, process_count: int) -> int:
    """Index in ``split`` of the first example of ``tfds_process_split``'s slice."""
    return process_index * (n // process_count) + min(process_index, n % process_count)


def tfds_num_examples(data_config, split: str) -> int:
    n = int(tfds_dataset(data_config, split, decode=False).cardinality())
    if n < 0:
        n = sum(1 for _ in tfds_dataset(data_config, split, decode=False))
    return n
