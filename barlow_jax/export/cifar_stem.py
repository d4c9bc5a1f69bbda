"""The CIFAR-stem ResNet on the PyTorch side.

A backbone with the CIFAR stem (3x3 stride-1 ``conv1``, no max-pool) has
torchvision's key names but no torchvision constructor builds it. The
source below is written verbatim into timm_hub model cards
(``barlow_jax/export/formats.py``) and run by ``torch_cifar_resnet()``, so
both stay the same.
"""

from __future__ import annotations

from typing import Any, Dict

STEM_WARNING = ("the CIFAR stem (3x3 stride-1 conv1, no max-pool) is not torchvision's: "
                "load it into torchvision after m.conv1 = torch.nn.Conv2d(3, {w}, 3, 1, 1, "
                "bias=False) and m.maxpool = torch.nn.Identity()")

TORCH_CIFAR_RESNET_SOURCE = '''
import torch, torchvision

def torch_cifar_resnet(name="resnet18", weights=None):
    """torchvision ResNet with the CIFAR stem (3x3 stride-1 conv1, no max-pool, no fc);
    weights: a state dict or a .safetensors/.pth path, loaded strictly."""
    m = getattr(torchvision.models, name)()
    m.conv1 = torch.nn.Conv2d(3, m.conv1.out_channels, 3, 1, 1, bias=False)
    m.maxpool = torch.nn.Identity()
    m.fc = torch.nn.Identity()
    if isinstance(weights, str):
        if weights.endswith(".safetensors"):
            from safetensors.torch import load_file
            weights = load_file(weights)
        else:
            weights = torch.load(weights, map_location="cpu", weights_only=True)
    if weights is not None:
        m.load_state_dict(weights, strict=True)
    return m
'''


def torch_cifar_resnet(name: str = "resnet18", weights=None):
    """A torchvision ResNet with the CIFAR stem, optionally loaded (needs torch, torchvision).

    Args:
      name: a torchvision constructor, ``'resnet18'``, ``'resnet34'`` or
        ``'resnet50'``.
      weights: None, a state dict, or the path of a ``.safetensors`` (needs
        safetensors) or ``.pth`` file as written by ``python -m
        barlow_jax.export``; loaded with ``strict=True``.

    Returns:
      The ``torch.nn.Module``: conv1 = Conv2d(3, width, 3, 1, 1), maxpool and
      fc = Identity (its output is the pooled features).
    """
    scope: Dict[str, Any] = {}
    exec(compile(TORCH_CIFAR_RESNET_SOURCE, "barlow_jax.export.TORCH_CIFAR_RESNET_SOURCE",
                 "exec"), scope)
    return scope["torch_cifar_resnet"](name, weights)
