"""Projector and predictor heads, and the network that joins them to a trunk.

A head is described by a string of layer widths, e.g. "8192-8192-8192"
(Barlow Twins), and options for biases and a final BatchNorm:

    Linear(d0), BN, ReLU, Linear(d1), BN, ReLU, ..., Linear(d_last)[, BN]

Barlow Twins uses no biases (the BN that follows makes them redundant);
VICReg keeps biases on the hidden layers, as its official code does.

The final BN's affine parameters (``last_bn_affine``) follow the method's
official head:

    'scale_bias'  gamma and beta (an ordinary affine BN; the default)
    'scale'       gamma only: SimCLR's ``batch_norm_relu(..., center=False)``
                  after the last layer (google-research/simclr model_util.py,
                  ``linear_layer(use_bias=False, use_bn=True)``)
    'none'        neither: SimSiam's ``nn.BatchNorm1d(dim, affine=False)``
                  (facebookresearch/simsiam builder.py)
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from barlow_jax.models.norm import BatchNorm
from barlow_jax.models.resnet import BN_EPS, BN_MOMENTUM

# torch.nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


# config value of ``last_bn_affine`` -> (use_scale, use_bias) of the final BN
LAST_BN_AFFINE = {"scale_bias": (True, True), "scale": (True, False), "none": (False, False)}


def last_bn_flags(value: str):
    """'scale_bias' | 'scale' | 'none' -> (use_scale, use_bias) of the head's final BN."""
    if value not in LAST_BN_AFFINE:
        raise ValueError(f"last_bn_affine={value!r} is not supported; use one of "
                         f"{sorted(LAST_BN_AFFINE)} ('scale' for SimCLR, 'none' for SimSiam).")
    return LAST_BN_AFFINE[value]


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
      last_bn: BatchNorm after the final Linear (SimCLR, SimSiam).
      last_bn_affine: that BN's affine parameters, 'scale_bias' | 'scale' |
        'none' (see the module docstring); ignored without ``last_bn``.
      dtype: computation dtype; parameters stay float32.
      axis_name: mapped axis for cross-device BN statistics.
    """

    widths: Sequence[int]
    hidden_bias: bool = False
    last_bias: bool = False
    last_bn: bool = False
    last_bn_affine: str = "scale_bias"
    dtype: Any = jnp.float32
    axis_name: Optional[str] = None

    def __post_init__(self):
        last_bn_flags(self.last_bn_affine)  # a bad value fails where the head is built
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False, views: int = 1):
        norm = lambda name, use_scale=True, use_bias=True: BatchNorm(
            use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
            use_scale=use_scale, use_bias=use_bias, dtype=self.dtype,
            param_dtype=jnp.float32, axis_name=self.axis_name if train else None,
            views=views if train else 1, name=name)
        last_scale, last_offset = last_bn_flags(self.last_bn_affine)
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
                x = norm(f"bn{i}", last_scale, last_offset)(x)
        return x


class SSLNet(nn.Module):
    """Trunk + projector (+ predictor): what every method trains.

    ``__call__`` returns a dict with ``features`` (pooled trunk output),
    ``z`` (projector output) and, when a predictor exists, ``p``. Outputs are
    cast to float32 so losses are always computed in full precision.
    ``views=V``: the batch is V views one after the other, each with its own
    BatchNorm statistics in training (models/norm.py); 1 = one set of
    statistics over the whole batch.
    """

    backbone: nn.Module
    projector: Optional[nn.Module] = None
    predictor: Optional[nn.Module] = None

    @nn.compact
    def __call__(self, x, train: bool = False, views: int = 1):
        h = self.backbone(x, train=train, views=views)
        out = {"features": h.astype(jnp.float32)}
        z = self.projector(h, train=train, views=views) if self.projector is not None else h
        out["z"] = z.astype(jnp.float32)
        if self.predictor is not None:
            out["p"] = self.predictor(z, train=train, views=views).astype(jnp.float32)
        return out
