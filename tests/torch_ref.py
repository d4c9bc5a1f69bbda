"""A torchvision ResNet forward pass from a state dict, with plain torch ops.

This is the PyTorch side of the export parity check: it lets a machine
without torchvision (the CPU machines here) run an exported ``resnet*.pth``
the way ``torchvision.models.resnet*`` would, in inference mode. It is
written from torchvision's ``models/resnet.py`` semantics, not from the Flax
model, so agreement between the two is evidence that the export is right:

* stem: ``conv1`` 7x7 stride 2 padding 3 (no bias), ``bn1``, ReLU,
  ``maxpool`` = MaxPool2d(3, stride 2, padding 1). A 3x3 ``conv1`` kernel
  means the CIFAR stem (not torchvision): Conv2d(3, 64, 3, 1, 1), no max-pool.
* ``layer{1..4}``: ``_make_layer(block, planes, n, stride)`` with stride 1
  for layer1 and 2 for layers 2-4; only block 0 of a layer is strided, and
  only block 0 may carry ``downsample`` = Sequential(conv1x1(stride), BN).
* BasicBlock: conv3x3(stride) -> bn1 -> relu -> conv3x3 -> bn2,
  ``+ identity`` -> relu.
* Bottleneck (v1.5): conv1x1 -> bn1 -> relu -> conv3x3(stride) -> bn2 -> relu
  -> conv1x1 -> bn3, ``+ identity`` -> relu.
* ``avgpool`` = AdaptiveAvgPool2d((1, 1)), flatten; ``fc`` is not applied
  (the exported backbones have ``fc = Identity``).
* BatchNorm in eval mode: ``(x - running_mean) / sqrt(running_var + eps) *
  weight + bias`` with torch's default eps 1e-5.

``mlp_head`` runs an ``nn.Sequential`` projector/predictor state dict (see
docs/export.md for the layout): a 2-D ``weight`` is a Linear, a 1-D one a
BatchNorm1d (eval mode), and an index that holds no tensors is the ReLU.

A test helper (tests/test_export.py, tests/test_export_formats.py), not
part of the package; it imports torch at the top. Run from the repository
root, ``from tests.torch_ref import resnet_features`` also checks an export
by hand.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
import torch.nn.functional as F

BN_EPS = 1e-5  # torch.nn.BatchNorm{1,2}d default


def _t(sd: Mapping, key: str) -> torch.Tensor:
    v = sd[key]
    return v if isinstance(v, torch.Tensor) else torch.as_tensor(v)


def _bn(sd: Mapping, prefix: str, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, _t(sd, prefix + ".running_mean"), _t(sd, prefix + ".running_var"),
                        _t(sd, prefix + ".weight"), _t(sd, prefix + ".bias"),
                        training=False, momentum=0.1, eps=BN_EPS)


def _conv(sd: Mapping, key: str, x: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    return F.conv2d(x, _t(sd, key), bias=None, stride=stride, padding=padding)


def _block(sd: Mapping, p: str, x: torch.Tensor, stride: int, bottleneck: bool) -> torch.Tensor:
    identity = x
    if bottleneck:
        out = F.relu(_bn(sd, p + "bn1", _conv(sd, p + "conv1.weight", x, 1, 0)))
        out = F.relu(_bn(sd, p + "bn2", _conv(sd, p + "conv2.weight", out, stride, 1)))
        out = _bn(sd, p + "bn3", _conv(sd, p + "conv3.weight", out, 1, 0))
    else:
        out = F.relu(_bn(sd, p + "bn1", _conv(sd, p + "conv1.weight", x, stride, 1)))
        out = _bn(sd, p + "bn2", _conv(sd, p + "conv2.weight", out, 1, 1))
    if p + "downsample.0.weight" in sd:
        identity = _bn(sd, p + "downsample.1", _conv(sd, p + "downsample.0.weight", x, stride, 0))
    return F.relu(out + identity)


def resnet_features(state_dict: Mapping, x_nchw) -> torch.Tensor:
    """Pooled features of a torchvision-layout ResNet, eval mode.

    Args:
      state_dict: torchvision key names (``conv1.weight``, ``layer1.0.bn1.weight``,
        ...), tensors or NumPy arrays; ``fc.*`` is ignored.
      x_nchw: float32 images [N, 3, H, W] (torch tensor or array).
    Returns:
      [N, C] float32 features (C = 2048 for ResNet-50, 512 for 18/34).
    """
    sd = state_dict
    x = x_nchw if isinstance(x_nchw, torch.Tensor) else torch.as_tensor(x_nchw)
    with torch.no_grad():
        stem_k = _t(sd, "conv1.weight").shape[-1]
        if stem_k == 7:
            x = F.relu(_bn(sd, "bn1", _conv(sd, "conv1.weight", x, 2, 3)))
            x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        else:  # CIFAR stem
            x = F.relu(_bn(sd, "bn1", _conv(sd, "conv1.weight", x, 1, 1)))
        bottleneck = any(re.fullmatch(r"layer\d+\.\d+\.conv3\.weight", k) for k in sd)
        for layer in range(1, 5):
            n_blocks = len({int(m.group(1)) for k in sd
                            if (m := re.match(rf"layer{layer}\.(\d+)\.", k))})
            for b in range(n_blocks):
                stride = 2 if (layer > 1 and b == 0) else 1
                x = _block(sd, f"layer{layer}.{b}.", x, stride, bottleneck)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return torch.flatten(x, 1)


def mlp_head(state_dict: Mapping, prefix: str, x) -> torch.Tensor:
    """Eval-mode forward of an ``nn.Sequential`` head stored under ``prefix``.

    ``prefix`` is e.g. ``'projector'``: keys ``projector.<i>.weight`` etc.
    Index i holds a Linear (2-D weight, optional bias), a BatchNorm1d (1-D
    weight/bias + running stats) or nothing (the parameterless ReLU).
    """
    sd = state_dict
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    idx = sorted({int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))})
    with torch.no_grad():
        for i in range(idx[-1] + 1):
            p = f"{prefix}.{i}"
            if p + ".weight" not in sd:
                x = F.relu(x)
            elif _t(sd, p + ".weight").ndim == 2:
                bias = _t(sd, p + ".bias") if p + ".bias" in sd else None
                x = F.linear(x, _t(sd, p + ".weight"), bias)
            else:
                x = _bn(sd, p, x)
        return x
