"""Builds the network a config describes."""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp

from barlow_jax.models.heads import MLPHead, SSLNet, parse_widths
from barlow_jax.models.resnet import build_resnet

DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16, "float32": jnp.float32}
CHOICES = tuple(DTYPES) + ("auto",)
# GPUs without bfloat16 arithmetic (compute capability < 8.0), by device_kind, for
# backends that do not report compute_capability.
_NO_BF16_GPUS = ("T4", "V100", "P100", "P4", "K80", "TITAN V", "RTX 20", "GTX")


def best_dtype_name(device=None) -> str:
    """What ``compute_dtype='auto'`` picks on ``device`` (default: the first device).

    bfloat16 on TPUs and on GPUs with bfloat16 units (NVIDIA compute capability
    >= 8.0: A100, L4, H100, ...); float16 (with dynamic loss scaling,
    barlow_jax/loss_scale.py) on older GPUs (T4, V100); float32 on CPUs, where
    bfloat16 matmuls are emulated and slower than float32.
    """
    import jax
    device = device if device is not None else jax.devices()[0]
    if device.platform == "cpu":
        return "float32"
    if device.platform == "gpu" or device.platform in ("cuda", "rocm"):
        cc = getattr(device, "compute_capability", None)
        if cc:
            try:
                return "bfloat16" if float(str(cc).split(".")[0]) >= 8 else "float16"
            except ValueError:
                pass
        kind = str(getattr(device, "device_kind", "")).upper()
        return "float16" if any(name in kind for name in _NO_BF16_GPUS) else "bfloat16"
    return "bfloat16"


def compute_dtype_name(config) -> str:
    """config.compute_dtype with 'auto' resolved (``best_dtype_name``)."""
    name = config.compute_dtype
    if name not in CHOICES:
        raise ValueError(f"config.compute_dtype={name!r} is not supported; use one of "
                         f"{', '.join(repr(c) for c in CHOICES)}.")
    return best_dtype_name() if name == "auto" else name


def compute_dtype(config):
    """The activations' dtype (parameters stay float32); 'auto': ``best_dtype_name``."""
    return DTYPES[compute_dtype_name(config)]


def build_backbone(config, *, axis_name: Optional[str] = None, dtype=None):
    m = config.model
    return build_resnet(m.name, width=m.width, cifar_stem=m.cifar_stem,
                        zero_init_residual=m.zero_init_residual,
                        dtype=dtype if dtype is not None else compute_dtype(config),
                        axis_name=axis_name, remat=bool(m.get("remat", False)))


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
