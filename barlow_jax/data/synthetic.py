"""Synthetic labelled images for smoke runs and tests (no files, no TF).

Each class has a fixed random low-resolution colour pattern; an example is
its class pattern, upsampled, shifted by a random offset and with pixel
noise added. The classes are therefore learnable, so kNN and linear probes
on a smoke run measure something real.
"""

from __future__ import annotations

import numpy as np


def make_synthetic(num_examples: int, image_size: int, num_classes: int = 10,
                   seed: int = 0, split_seed: int = 0):
    """Returns (images uint8 [N, S, S, 3], labels int32 [N]), deterministic.

    ``seed`` fixes the class patterns; ``split_seed`` > 0 draws other samples
    of the SAME classes (a test split), so features learnt on one split
    classify the other.
    """
    rng = np.random.default_rng(seed)
    coarse = max(2, image_size // 4)
    protos = rng.uniform(0, 255, size=(num_classes, coarse, coarse, 3))
    if split_seed:
        rng = np.random.default_rng([seed, split_seed])
    reps = -(-image_size // coarse)
    protos = np.repeat(np.repeat(protos, reps, axis=1), reps, axis=2)
    protos = np.concatenate([protos, protos], axis=1)
    protos = np.concatenate([protos, protos], axis=2)
    labels = rng.integers(0, num_classes, size=num_examples).astype(np.int32)
    dy = rng.integers(0, image_size, size=num_examples)
    dx = rng.integers(0, image_size, size=num_examples)
    images = np.empty((num_examples, image_size, image_size, 3), np.float32)
    for i in range(num_examples):
        images[i] = protos[labels[i], dy[i]:dy[i] + image_size, dx[i]:dx[i] + image_size]
    images += rng.normal(0, 20, size=images.shape)
    return np.clip(images, 0, 255).astype(np.uint8), labels
