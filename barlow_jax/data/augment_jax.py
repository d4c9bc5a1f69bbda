"""Two-view augmentation in JAX (runs on the accelerator, per device)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(x, data_config):
    mean = jnp.asarray(data_config.get("mean", IMAGENET_MEAN), jnp.float32)
    std = jnp.asarray(data_config.get("std", IMAGENET_STD), jnp.float32)
    return (x - mean) / std


def augment(images_uint8, key, view_config, data_config):
    """uint8 [B,H,W,3] -> float32 normalised view: flip and brightness."""
    x = images_uint8.astype(jnp.float32) / 255.0
    kf, kb = jax.random.split(key)
    b = x.shape[0]
    flip = jax.random.bernoulli(kf, view_config.get("flip_prob", 0.5), (b, 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1], x)
    scale = 1.0 + jax.random.uniform(kb, (b, 1, 1, 1), minval=-0.4, maxval=0.4)
    x = jnp.clip(x * scale, 0.0, 1.0)
    return normalize(x, data_config)
