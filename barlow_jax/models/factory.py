"""Builds the network a config describes."""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp

from barlow_jax.models.heads import MLPHead, SSLNet, parse_widths
from barlow_jax.models.resnet import build_resnet

DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}


def compute_dtype(config):
    if config.compute_dtype not in DTYPES:
        raise ValueError(f"config.compute_dtype={config.compute_dtype!r} is not supported; "
                         f"use one of {sorted(DTYPES)}.")
    return DTYPES[config.compute_dtype]


def build_backbone(config, *, axis_name: Optional[str] = None, dtype=None):
    m = config.model
    return build_resnet(m.name, width=m.width, cifar_stem=m.cifar_stem,
                        zero_init_residual=m.zero_init_residual,
                        dtype=dtype if dtype is not None else compute_dtype(config),
                        axis_name=axis_name)


def _head(cfg, dtype, axis_name):
    widths = parse_widths(cfg.spec)
    if not widths:
        return None
    return MLPHead(widths=widths, hidden_bias=cfg.hidden_bias, last_bias=cfg.last_bias,
                   last_bn=cfg.last_bn, last_bn_affine=cfg.get("last_bn_affine", "scale_bias"),
                   dtype=dtype, axis_name=axis_name)


def build_ssl_net(config, *, axis_name: Optional[str] = None, dtype=None,
                  with_predictor: bool = True) -> SSLNet:
    """Backbone + projector (+ predictor when config.predictor.spec is set).

    Its parameter tree is ``{'backbone': ..., 'projector': ..., 'predictor': ...}``.
    ``with_predictor=False`` builds the BYOL target network (same names,
    no predictor).
    """
    dtype = dtype if dtype is not None else compute_dtype(config)
    return SSLNet(
        backbone=build_backbone(config, axis_name=axis_name, dtype=dtype),
        projector=_head(config.projector, dtype, axis_name),
        predictor=_head(config.predictor, dtype, axis_name) if with_predictor else None)
