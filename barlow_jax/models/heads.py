"""Projector and predictor heads, and the network that joins them to a trunk.

A head is described by a string of layer widths, e.g. "8192-8192-8192"
(Barlow Twins), and options for biases and a final BatchNorm:

    Linear(d0), BN, ReLU, Linear(d1), BN, ReLU, ..., Linear(d_last)[, BN]

Barlow Twins uses no biases (the BN that follows makes them redundant);
VICReg keeps biases on the hidden layers, as its official code does.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from barlow_jax.models.resnet import BN_EPS, BN_MOMENTUM

# torch.nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def parse_widths(spec: str) -> Sequence[int]:
    """'8192-8192-8192' -> (8192, 8192, 8192); '' -> ()."""
    if not spec:
        return ()
    try:
        widths = tuple(int(w) for w in str(spec).split("-"))
    except ValueError:
        raise ValueError(f"Head spec {spec!r} is not a dash-separated list of widths; "
                         f"write it like '8192-8192-8192'.") from None
    if any(w <= 0 for w in widths):
        raise ValueError(f"Head spec {spec!r} has a non-positive width; every layer "
                         f"needs at least one unit.")
    return widths


class MLPHead(nn.Module):
    """Linear-BN-ReLU blocks then a final Linear (optionally followed by BN).

    Attributes:
      widths: output width of each Linear layer.
      hidden_bias: bias on the hidden Linear layers.
      last_bias: bias on the final Linear layer.
      last_bn: BatchNorm (affine) after the final Linear (SimCLR v2 style).
      dtype: computation dtype; parameters stay float32.
      axis_name: mapped axis for cross-device BN statistics.
    """

    widths: Sequence[int]
    hidden_bias: bool = False
    last_bias: bool = False
    last_bn: bool = False
    dtype: Any = jnp.float32
    axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda name: nn.BatchNorm(
            use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
            dtype=self.dtype, param_dtype=jnp.float32,
            axis_name=self.axis_name if train else None, name=name)
        x = jnp.asarray(x, self.dtype)
        n = len(self.widths)
        for i, w in enumerate(self.widths):
            last = i == n - 1
            x = nn.Dense(w, use_bias=self.last_bias if last else self.hidden_bias,
                         dtype=self.dtype, param_dtype=jnp.float32,
                         kernel_init=linear_init, name=f"linear{i}")(x)
            if not last:
                x = nn.relu(norm(f"bn{i}")(x))
            elif self.last_bn:
                x = norm(f"bn{i}")(x)
        return x


class SSLNet(nn.Module):
    """Trunk + projector (+ predictor): what every method trains.

    ``__call__`` returns a dict with ``features`` (pooled trunk output),
    ``z`` (projector output) and, when a predictor exists, ``p``. Outputs are
    cast to float32 so losses are always computed in full precision.
    """

    backbone: nn.Module
    projector: Optional[nn.Module] = None
    predictor: Optional[nn.Module] = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = self.backbone(x, train=train)
        out = {"features": h.astype(jnp.float32)}
        z = self.projector(h, train=train) if self.projector is not None else h
        out["z"] = z.astype(jnp.float32)
        if self.predictor is not None:
            out["p"] = self.predictor(z, train=train).astype(jnp.float32)
        return out
