"""Pictures of training quantities, NumPy only: what TensorBoard/wandb and the report show.

A method names its pictures in the registry (``Method.pictures``,
methods/__init__.py): each ``Picture`` turns one non-scalar entry of the
step's metrics (e.g. Barlow Twins' ``c_block``) into a uint8 RGB image
that telemetry.py logs. ``report.py`` draws the same images into PNGs.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

BLOCK = 64


@dataclasses.dataclass(frozen=True)
class Picture:
    """``render(metrics[key]) -> uint8 [H, W, 3]``, logged under ``tag``."""
    tag: str
    key: str
    render: Callable[[np.ndarray], np.ndarray]


def diverging_rgb(values, vmax: float = 1.0) -> np.ndarray:
    """uint8 [..., 3]: blue (-vmax) -> white (0) -> red (+vmax), clipped."""
    t = np.clip(np.asarray(values, np.float64) / vmax, -1.0, 1.0)[..., None]
    white = np.array([1.0, 1.0, 1.0])
    red, blue = np.array([0.70, 0.02, 0.15]), np.array([0.02, 0.19, 0.70])
    rgb = np.where(t >= 0, white + t * (red - white), white - t * (blue - white))
    return np.round(255.0 * rgb).astype(np.uint8)


def c_block(c, size: int = BLOCK) -> np.ndarray:
    """The top-left size x size block of a (D x D) matrix as float32 NumPy."""
    c = np.asarray(c, np.float32)
    return c[:size, :size]


def c_matrix_image(c_block_values, scale: int = 4, gap: int = 8) -> np.ndarray:
    """uint8 [H, W, 3] picture of a C block (left) beside the identity (right).

    Colours: blue = -1, white = 0, red = +1; each entry is a ``scale`` x
    ``scale`` square. NumPy only, so a TensorBoard writer can log it on any
    machine: ``writer.write_image(step, 'cross_correlation', c_matrix_image(block))``.
    """
    block = np.asarray(c_block_values, np.float32)
    if block.ndim != 2 or block.shape[0] != block.shape[1]:
        raise ValueError(f"c_matrix_image needs a square 2-D block; got shape {block.shape}.")
    up = lambda m: np.kron(m, np.ones((scale, scale)))
    left = diverging_rgb(up(block))
    right = diverging_rgb(up(np.eye(block.shape[0], dtype=np.float32)))
    sep = np.full((left.shape[0], gap, 3), 255, np.uint8)
    return np.concatenate([left, sep, right], axis=1)
