"""ResNet v1.5 in Flax linen, identical to torchvision's layer for layer.

Differences from the Flax ImageNet example that matter for weight export:
every convolution uses explicit symmetric padding (stem 7x7: 3, 3x3: 1,
max-pool: 1) because Flax's 'SAME' pads stride-2 convolutions asymmetrically
(FIELD_NOTES §7), and the stride sits on the 3x3 convolution of a bottleneck
(v1.5), as in torchvision.

Parameter tree (names chosen so the torchvision mapping is mechanical)::

    conv1, bn1                         stem
    layer{1..4}_{i}/conv{1,2,3}, bn{1,2,3}
    layer{1..4}_{i}/downsample_conv, downsample_bn   (first block when shapes change)

Inputs are NHWC float images; the output of ``apply(..., train=...)`` is the
globally average-pooled feature vector (2048-d for ResNet-50, 512-d for 18/34).
BatchNorm matches torch's defaults (momentum 0.1 -> Flax momentum 0.9, eps
1e-5, biased batch variance for normalisation). With ``axis_name`` set, batch
statistics are averaged over that mapped axis (SyncBatchNorm).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence, Type

import flax.linen as nn
import jax.numpy as jnp

from barlow_jax.models.norm import BatchNorm

# torchvision initialises convolutions with kaiming_normal_(fan_out, relu).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

BN_MOMENTUM = 0.9  # torch momentum 0.1
BN_EPS = 1e-5


class BasicBlock(nn.Module):
    """torchvision BasicBlock (ResNet-18/34): two 3x3 convs, expansion 1."""

    features: int
    strides: int
    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]
    zero_init_residual: bool
    downsample: bool
    expansion: int = 1

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.features, (3, 3), (self.strides, self.strides),
                      padding=((1, 1), (1, 1)), name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
        y = self.norm(name="bn2",
                      scale_init=nn.initializers.zeros if self.zero_init_residual
                      else nn.initializers.ones)(y)
        if self.downsample:
            residual = self.conv(self.features, (1, 1), (self.strides, self.strides),
                                 padding="VALID", name="downsample_conv")(x)
            residual = self.norm(name="downsample_bn")(residual)
        return nn.relu(y + residual)


class Bottleneck(nn.Module):
    """torchvision Bottleneck (ResNet-50): 1x1, 3x3 (strided, v1.5), 1x1 x4."""

    features: int
    strides: int
    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]
    zero_init_residual: bool
    downsample: bool
    expansion: int = 4

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.features, (1, 1), padding="VALID", name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.features, (3, 3), (self.strides, self.strides),
                      padding=((1, 1), (1, 1)), name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(self.features * 4, (1, 1), padding="VALID", name="conv3")(y)
        y = self.norm(name="bn3",
                      scale_init=nn.initializers.zeros if self.zero_init_residual
                      else nn.initializers.ones)(y)
        if self.downsample:
            residual = self.conv(self.features * 4, (1, 1), (self.strides, self.strides),
                                 padding="VALID", name="downsample_conv")(x)
            residual = self.norm(name="downsample_bn")(residual)
        return nn.relu(y + residual)


class ResNet(nn.Module):
    """torchvision-layout ResNet trunk returning pooled features.

    Attributes:
      stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
      block_cls: BasicBlock or Bottleneck.
      width: channels of the first stage (64 in torchvision).
      cifar_stem: 3x3 stride-1 stem conv and no max-pool (for 32-pixel
        images). Not a torchvision layout; export documents it as such.
      zero_init_residual: last BN scale of every block starts at 0.
      dtype: computation dtype (bfloat16 for mixed precision); parameters
        are always float32.
      axis_name: mapped axis for cross-device BatchNorm statistics.
      remat: recompute each block's activations in the backward pass instead
        of keeping them (``nn.remat``): less memory, about one more forward
        pass of compute. Parameter names are unchanged.
    """

    stage_sizes: Sequence[int]
    block_cls: Type[nn.Module]
    width: int = 64
    cifar_stem: bool = False
    zero_init_residual: bool = True
    dtype: Any = jnp.float32
    axis_name: Optional[str] = None
    remat: bool = False

    @property
    def num_features(self) -> int:
        expansion = 4 if self.block_cls is Bottleneck else 1
        return self.width * 8 * expansion

    @nn.compact
    def __call__(self, x, train: bool = False, views: int = 1):
        """``views``: the batch holds that many views one after the other, each
        batch-normalised with its own statistics in training (models/norm.py)."""
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                                 param_dtype=jnp.float32, kernel_init=conv_init)
        norm = functools.partial(BatchNorm, use_running_average=not train,
                                 momentum=BN_MOMENTUM, epsilon=BN_EPS,
                                 dtype=self.dtype, param_dtype=jnp.float32,
                                 axis_name=self.axis_name if train else None,
                                 views=views if train else 1)
        block_cls = nn.remat(self.block_cls) if self.remat else self.block_cls
        x = jnp.asarray(x, self.dtype)
        if self.cifar_stem:
            x = conv(self.width, (3, 3), padding=((1, 1), (1, 1)), name="conv1")(x)
            x = nn.relu(norm(name="bn1")(x))
        else:
            x = conv(self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="conv1")(x)
            x = nn.relu(norm(name="bn1")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        expansion = 4 if self.block_cls is Bottleneck else 1
        in_ch = self.width
        for i, n_blocks in enumerate(self.stage_sizes):
            feats = self.width * 2 ** i
            for j in range(n_blocks):
                strides = 2 if (i > 0 and j == 0) else 1
                downsample = j == 0 and (strides != 1 or in_ch != feats * expansion)
                x = block_cls(feats, strides, conv, norm, self.zero_init_residual,
                                   downsample, name=f"layer{i + 1}_{j}")(x)
                in_ch = feats * expansion
        return jnp.mean(x, axis=(1, 2))


STAGE_SIZES = {
    # A one-block-per-stage trunk for smoke tests and CPU demos (not torchvision).
    "resnet_tiny": ((1, 1, 1, 1), BasicBlock),
    "resnet18": ((2, 2, 2, 2), BasicBlock),
    "resnet34": ((3, 4, 6, 3), BasicBlock),
    "resnet50": ((3, 4, 6, 3), Bottleneck),
}


def build_resnet(name: str, **kwargs) -> ResNet:
    """Returns the ResNet called ``name`` ('resnet18' | 'resnet34' | 'resnet50')."""
    if name not in STAGE_SIZES:
        raise ValueError(f"Unknown backbone {name!r}; set config.model.name to one of "
                         f"{sorted(STAGE_SIZES)}.")
    stages, block = STAGE_SIZES[name]
    return ResNet(stage_sizes=stages, block_cls=block, **kwargs)


def resnet18(**kwargs) -> ResNet:
    return build_resnet("resnet18", **kwargs)


def resnet34(**kwargs) -> ResNet:
    return build_resnet("resnet34", **kwargs)


def resnet50(**kwargs) -> ResNet:
    return build_resnet("resnet50", **kwargs)
