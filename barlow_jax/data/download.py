"""CIFAR-10 as in-memory uint8 arrays for ``config.data.source='arrays'``.

* ``cifar10_arrays('torchvision' | 'tfds', root)``: the official dataset,
  downloaded once into ``root`` by torchvision (the python pickles from
  cs.toronto.edu, no TensorFlow needed) or TensorFlow Datasets.
* ``archive_subset(path, ...)``: the first images of every class of an
  ImageNet-style folder or ``.tar``/``.tar.gz`` (``<split>/<class>/*.jpg``, such
  as ``../shared/data/cifar10-jpeg.tar.gz``), read without extracting it: a few
  seconds for a few thousand images, for tiny runs (tests, the notebook's CPU
  setting).
* ``use_arrays(config, arrays)``: points a config at them.

Each returns ``{'train': (images uint8 [N, H, W, 3], labels int32 [N]), 'test': ...}``.
"""

from __future__ import annotations

import io
import os
import tarfile
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image

Arrays = Dict[str, Tuple[np.ndarray, np.ndarray]]
# The official CIFAR-10 training set's per-channel statistics (the pickled PNG-exact pixels).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
DEFAULT_ROOT = os.path.join("~", ".cache", "barlow_jax", "downloads")


def cifar10_arrays(source: str = "torchvision", root: str = DEFAULT_ROOT) -> Arrays:
    """CIFAR-10 train (50,000) and test (10,000) images downloaded with ``source``."""
    root = os.path.abspath(os.path.expanduser(root))
    os.makedirs(root, exist_ok=True)
    if source == "torchvision":
        try:
            from torchvision.datasets import CIFAR10
        except ImportError as e:
            raise ImportError(f"torchvision is not installed ({e}); pip install torchvision, or "
                              f"use source='tfds'.") from e
        out = {}
        for split, train in (("train", True), ("test", False)):
            ds = CIFAR10(root, train=train, download=True)
            out[split] = (np.asarray(ds.data, np.uint8), np.asarray(ds.targets, np.int32))
        return out
    if source == "tfds":
        from barlow_jax.data.tensorflow_env import import_tensorflow
        import_tensorflow()  # quiet, and hidden from the GPU before tfds touches it
        import tensorflow_datasets as tfds
        out = {}
        for split in ("train", "test"):
            images, labels = tfds.as_numpy(tfds.load("cifar10", split=split, batch_size=-1,
                                                     as_supervised=True, data_dir=root))
            out[split] = (np.asarray(images, np.uint8), np.asarray(labels, np.int32))
        return out
    raise ValueError(f"Unknown CIFAR-10 download source {source!r}; use 'torchvision' or 'tfds' "
                     f"(or a local archive with config.data.path).")


def _split_and_class(name: str, splits) -> Optional[Tuple[str, str]]:
    parts = name.replace("\\", "/").split("/")
    if len(parts) >= 3 and parts[-3] in splits and \
            parts[-1].lower().endswith((".jpg", ".jpeg", ".png")):
        return parts[-3], parts[-2]
    return None


def _members(path: str):
    """(name, read()) of every file under a folder or in a tar archive, in stored order."""
    if os.path.isdir(path):
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for f in sorted(filenames):
                full = os.path.join(dirpath, f)
                yield os.path.relpath(full, path), (lambda full=full: open(full, "rb").read())
        return
    with tarfile.open(path) as tar:
        for m in tar:
            if m.isfile():
                yield m.name, (lambda m=m: tar.extractfile(m).read())


def archive_subset(path: str, per_class: Optional[Dict[str, int]] = None,
                   size: Optional[int] = None) -> Arrays:
    """The first ``per_class[split]`` images of each class of each split (default 100 train,
    50 test), bicubic-resized to ``size`` x ``size`` when given; classes in sorted order."""
    per_class = per_class or {"train": 100, "test": 50}
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist; give an ImageNet-style folder or "
                                f".tar/.tar.gz of <split>/<class>/ images.")
    got: Dict[str, Dict[str, list]] = {s: {} for s in per_class}
    for name, read in _members(path):
        where = _split_and_class(name, per_class)
        if where is None:
            continue
        split, cls = where
        images = got[split].setdefault(cls, [])
        if len(images) >= per_class[split]:
            continue
        im = Image.open(io.BytesIO(read())).convert("RGB")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        images.append(np.asarray(im, np.uint8))
    out = {}
    for split, by_class in got.items():
        if not by_class:
            raise ValueError(f"No '{split}/<class>/' images found in {path}.")
        classes = sorted(by_class)
        images = np.concatenate([np.stack(by_class[c]) for c in classes])
        labels = np.concatenate([np.full(len(by_class[c]), i, np.int32)
                                 for i, c in enumerate(classes)])
        out[split] = (images, labels)
    return out


def use_arrays(config, arrays: Arrays, mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """Points ``config.data`` at in-memory ``arrays`` (source 'arrays', image size, classes)."""
    train_images, train_labels = arrays["train"]
    config.data.source = "arrays"
    config.data.arrays = arrays
    config.data.path = ""
    config.data.image_size = int(train_images.shape[1])
    config.data.num_classes = int(max(int(l.max()) for _, l in arrays.values()) + 1)
    config.data.mean, config.data.std = tuple(mean), tuple(std)
    return config
