"""Builds the training pipeline named by ``config.data`` (see package doc)."""

from __future__ import annotations

from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from barlow_jax.data import augment_jax
from barlow_jax.data.synthetic import make_synthetic


def load_arrays(data_config, split: str = "train", seed: int = 0):
    """(images uint8 [N,H,W,3], labels int32 [N]) for in-memory sources."""
    if data_config.source == "synthetic":
        n = data_config.num_examples if split == "train" else data_config.get(
            "num_eval_examples", data_config.num_examples)
        return make_synthetic(n, data_config.image_size,
                              num_classes=data_config.get("num_classes", 10),
                              seed=data_config.get("synthetic_seed", 0) + (split != "train"))
    if data_config.source == "arrays":
        images, labels = data_config.arrays[split]
        return np.asarray(images, np.uint8), np.asarray(labels, np.int32)
    raise ValueError(f"config.data.source={data_config.source!r} is not supported yet; "
                     f"use 'synthetic' or 'arrays'.")


def load_eval_arrays(data_config, split: str):
    """Labelled uint8 images of ``split`` for evaluation (kNN, probes)."""
    return load_arrays(data_config, split)


class DevicePipeline:
    """The whole uint8 dataset lives on the devices; every step is a gather.

    Each device owns a contiguous 1/D slice of the (truncated) dataset and
    draws its part of the global batch from that slice by a per-epoch
    permutation derived from (seed, epoch, device): no host work per step
    beyond a tiny index array, and a resumed run draws the same indices.
    """

    def __init__(self, images, labels, data_config, *, global_batch_size, seed,
                 mesh, start_step=0):
        n_dev = mesh.devices.size
        n = (len(images) // n_dev) * n_dev
        if n < global_batch_size:
            raise ValueError(
                f"The dataset has {len(images)} images, fewer than one global batch of "
                f"{global_batch_size}; lower config.batch_size or use more data.")
        self.mesh = mesh
        self.sharding = NamedSharding(mesh, P("data"))
        self.num_examples = n
        self.steps_per_epoch = n // global_batch_size
        self.local_n = n // n_dev
        self.local_batch = global_batch_size // n_dev
        self.n_dev = n_dev
        self.seed = seed
        self.step = start_step
        self.data_config = data_config
        self.device_data = {
            "images": jax.device_put(images[:n], self.sharding),
            "labels": jax.device_put(labels[:n], self.sharding),
        }

    def _indices(self, step):
        epoch, pos = divmod(step, self.steps_per_epoch)
        out = np.empty((self.n_dev, self.local_batch), np.int32)
        for d in range(self.n_dev):
            perm = np.random.default_rng([self.seed, epoch, d]).permutation(self.local_n)
            out[d] = perm[pos * self.local_batch:(pos + 1) * self.local_batch]
        return out.reshape(-1)

    def __iter__(self):
        return self

    def __next__(self):
        idx = self._indices(self.step)
        self.step += 1
        return {"idx": jax.device_put(idx, self.sharding)}

    def make_views(self, batch, device_data, key):
        images = device_data["images"][batch["idx"]]
        k1, k2 = jax.random.split(key)
        aug = self.data_config.augment
        return (augment_jax.augment(images, k1, aug.view1, self.data_config),
                augment_jax.augment(images, k2, aug.view2, self.data_config))

    def stats(self) -> Dict[str, Any]:
        return {"skipped_images": 0}

    def close(self):
        pass


def create_pipeline(data_config, *, global_batch_size: int, seed: int, mesh,
                    start_step: int = 0):
    """The pipeline for ``config.data`` (see the package docstring)."""
    if data_config.placement != "device":
        raise ValueError(f"config.data.placement={data_config.placement!r} is not "
                         f"supported yet; use 'device'.")
    images, labels = load_arrays(data_config, "train", seed)
    return DevicePipeline(images, labels, data_config, global_batch_size=global_batch_size,
                          seed=seed, mesh=mesh, start_step=start_step)
