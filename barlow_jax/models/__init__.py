"""Backbones and heads: torchvision-exact ResNets, projector/predictor MLPs."""

from barlow_jax.models.factory import (best_dtype_name, build_backbone, build_ssl_net,
                                       compute_dtype, compute_dtype_name)
from barlow_jax.models.heads import MLPHead, SSLNet, parse_widths
from barlow_jax.models.resnet import (STAGE_SIZES, BasicBlock, Bottleneck, ResNet,
                                      build_resnet, resnet18, resnet34, resnet50)

__all__ = ["best_dtype_name", "compute_dtype_name", "build_backbone", "build_ssl_net",
           "compute_dtype", "MLPHead", "SSLNet", "parse_widths", "STAGE_SIZES", "BasicBlock",
           "Bottleneck", "ResNet", "build_resnet", "resnet18", "resnet34", "resnet50"]
