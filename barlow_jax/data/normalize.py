"""The one mean/std normalisation of images, for every array library.

``config.data.mean`` / ``config.data.std`` (per channel, on the [0, 1] scale;
ImageNet's by default) are applied in one place: the JAX augmentations, the
TensorFlow augmentations, the host-side evaluation batches, the on-device
evaluation of uint8 images, and the inverse used to show or re-feed images.
The arithmetic uses only ``-``, ``/`` and ``*`` with float32 NumPy constants, so
the same function serves NumPy arrays, ``jax.Array`` values (inside ``jit`` too)
and ``tf.Tensor`` values.
"""

from typing import Tuple

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def mean_std(data_config) -> Tuple[np.ndarray, np.ndarray]:
    """The configured per-channel mean and std.

    Args:
      data_config: ``config.data`` (a ConfigDict or dict); ``mean``/``std`` are
        optional and default to ImageNet's.

    Returns:
      ``(mean, std)``, float32 NumPy arrays of shape [3].
    """
    mean = np.asarray(data_config.get("mean", IMAGENET_MEAN), np.float32)
    std = np.asarray(data_config.get("std", IMAGENET_STD), np.float32)
    return mean, std


def normalize(x, data_config):
    """(x - mean) / std for float images on the [0, 1] scale, channels last.

    Args:
      x: float32 NumPy array, ``jax.Array`` or ``tf.Tensor``, [..., 3] in [0, 1].
      data_config: ``config.data``.

    Returns:
      The normalised images, same type and shape as ``x``.
    """
    mean, std = mean_std(data_config)
    return (x - mean) / std


def from_uint8(images, data_config):
    """uint8 images (0..255) -> float32 normalised; NumPy or JAX arrays.

    Args:
      images: uint8 [..., 3] NumPy array or ``jax.Array``.
      data_config: ``config.data``.

    Returns:
      float32 normalised images of the same array type.
    """
    return normalize(images.astype(np.float32) / np.float32(255.0), data_config)


def to_uint8(images, data_config) -> np.ndarray:
    """The inverse of ``from_uint8`` on the host (rounded, clipped to 0..255).

    Args:
      images: float32 normalised [..., 3] images (any array convertible by NumPy).
      data_config: ``config.data``.

    Returns:
      uint8 NumPy array of the same shape.
    """
    mean, std = mean_std(data_config)
    x = (np.asarray(images, np.float32) * std + mean) * 255.0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def to_unit(images, data_config) -> np.ndarray:
    """Normalised images back to [0, 1] on the host, clipped (for pictures)."""
    mean, std = mean_std(data_config)
    return np.clip(np.asarray(images, np.float32) * std + mean, 0.0, 1.0)
