"""Labelled batches for evaluation (kNN monitor, linear probe), without TensorFlow.

Transforms follow Barlow Twins' ``evaluate.py`` (torchvision defaults, i.e.
bilinear interpolation):

* ``mode='test'``: ``Resize(round(S * 256 / 224))`` (torchvision's, long side
  truncated: ``resize_shorter_size``) + ``CenterCrop(S)`` for
  S = ``config.data.image_size`` > 64; for small-image recipes (S <= 64, e.g.
  CIFAR at 32) the resize is to S itself, the identity on S x S images.
* ``mode='train'``: ``RandomResizedCrop(S)`` (scale (0.08, 1), ratio (3/4, 4/3))
  + ``RandomHorizontalFlip()``, seeded by (seed, epoch, example index).

Images are decoded and transformed with PIL on a thread pool (only the TFDS
source needs TensorFlow), so the evaluation runs where TF is not installed.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
from typing import Iterator, Optional

import jax
import numpy as np
from PIL import Image

from barlow_jax.data import folder
from barlow_jax.data.normalize import from_uint8
from barlow_jax.data.pipeline import epoch_permutation, epoch_seed
from barlow_jax.data.sources import IndexedSource, load_arrays, open_source, tfds_dataset

MODES = ("test", "train")


def load_eval_arrays(data_config, split: str):
    """(uint8 [N,H,W,3], int32 [N]) of a whole split, for small datasets."""
    return load_arrays(data_config, split)


def eval_resize(image_size: int) -> int:
    """Shorter side before the centre crop: 256 for 224, the size itself up to 64."""
    return round(image_size * 256 / 224) if image_size > 64 else image_size


def crop_box(rng: np.random.Generator, height: int, width: int,
             scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts: int = 10):
    """torchvision RandomResizedCrop.get_params in NumPy -> (top, left, h, w)."""
    area = height * width
    for _ in range(attempts):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def resize_shorter_size(height: int, width: int, shorter: int):
    """(h, w) of torchvision ``Resize(shorter)``: the long side is TRUNCATED, int(shorter * long / short).

    torchvision ``_compute_resized_output_size``; rounding instead moves half
    of non-square images by one pixel (docs/methods.md).
    """
    short, long = min(height, width), max(height, width)
    new_short, new_long = shorter, int(shorter * long / short)
    return (new_short, new_long) if height <= width else (new_long, new_short)


def resize_center_crop(image: np.ndarray, shorter: int, crop: int) -> np.ndarray:
    """torchvision ``Resize(shorter)`` (bilinear, PIL) + ``CenterCrop(crop)``."""
    h, w = image.shape[:2]
    if min(h, w) != shorter:
        h, w = resize_shorter_size(h, w, shorter)
        image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return image[top:top + crop, left:left + crop]


def transform(image: np.ndarray, size: int, mode: str, rng=None) -> np.ndarray:
    """uint8 [H,W,3] -> uint8 [size,size,3] with the ``mode`` transform (module doc)."""
    if mode == "test":
        return resize_center_crop(image, eval_resize(size), size)
    top, left, h, w = crop_box(rng, *image.shape[:2])
    out = Image.fromarray(image).crop((left, top, left + w, top + h))
    out = np.asarray(out.resize((size, size), Image.BILINEAR))
    return out[:, ::-1] if rng.uniform() < 0.5 else out


def _batch(images, labels, data_config) -> dict:
    """uint8 images + labels -> {'image': float32 normalised, 'label': int32}."""
    x = from_uint8(np.stack(images), data_config)
    return {"image": x.astype(np.float32), "label": np.asarray(labels, np.int32)}


def eval_batches(data_config, split: str, *, batch_size: int, mode: str = "test",
                 seed: int = 0, epoch: int = 0, indices: Optional[np.ndarray] = None,
                 process_index: Optional[int] = None,
                 process_count: Optional[int] = None) -> Iterator[dict]:
    """Yields ``{'image': float32 [b,S,S,3] normalised, 'label': int32 [b]}`` NumPy batches.

    Covers this process's share of ``split`` exactly once; the last batch may
    be smaller. Order: the split's order (folders: sorted class, then file) in
    mode 'test'; ``epoch_permutation(seed, epoch, n)`` of it in mode 'train'.
    ``indices`` restricts the split to those rows (positions in the split's
    order), visited in the given order ('test') or in the order
    ``indices[epoch_permutation(seed, epoch, len(indices))]`` ('train').
    Process p of P gets ``array_split(order, P)[p]`` (TFDS: the shard ``p::P``);
    ``process_index`` / ``process_count`` override JAX's (e.g. 0 / 1 to read
    the whole split on every process).
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is unknown; use 'test' or 'train'.")
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be > 0.")
    pc = jax.process_count() if process_count is None else process_count
    pi = jax.process_index() if process_count is None else process_index
    size = data_config.image_size
    source = open_source(data_config, split)
    if not isinstance(source, IndexedSource):
        if indices is not None:
            raise ValueError("eval_batches(indices=...) needs an indexed source (folder, "
                             "arrays, synthetic), not TFDS.")
        yield from _tfds_batches(data_config, split, batch_size, mode, seed, epoch, pi, pc)
        return
    rows = np.arange(source.num_examples) if indices is None else np.asarray(indices, np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= source.num_examples):
        raise ValueError(f"eval_batches: indices must lie in [0, {source.num_examples}) for "
                         f"split {split!r}.")
    order = rows if mode == "test" else rows[epoch_permutation(seed, epoch, len(rows))]
    mine = np.array_split(order, pc)[pi]

    def one(i):
        image = folder.read_rgb(source.paths[i]) if source.images is None else source.images[i]
        rng = np.random.default_rng([seed, epoch, int(i)]) if mode == "train" else None
        return transform(np.asarray(image), size, mode, rng)

    workers = min(16, os.cpu_count() or 1) if source.paths is not None else 1
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(mine), batch_size):
            ids = mine[start:start + batch_size]
            yield _batch(list(pool.map(one, ids)), source.labels[ids], data_config)


def _tfds_batches(data_config, split, batch_size, mode, seed, epoch, pi, pc):
    from barlow_jax.data.sources import tfds_process_split
    ds = tfds_dataset(data_config, tfds_process_split(split, pi, pc), decode=True)
    if mode == "train":
        ds = ds.shuffle(data_config.shuffle_buffer, seed=epoch_seed(seed, epoch))
    images, labels = [], []
    for k, (image, label) in enumerate(ds.as_numpy_iterator()):
        rng = np.random.default_rng([seed, epoch, k]) if mode == "train" else None
        images.append(transform(image, data_config.image_size, mode, rng))
        labels.append(label)
        if len(images) == batch_size:
            yield _batch(images, labels, data_config)
            images, labels = [], []
    if images:
        yield _batch(images, labels, data_config)
