"""The one Flax <-> torchvision name and layout mapping (both directions use it).

Name and layout mapping (Flax tree of barlow_jax/models/resnet.py -> torch):

====================================  ======================================
Flax                                  torchvision
====================================  ======================================
conv1/kernel  [kh, kw, in, out] HWIO  conv1.weight  [out, in, kh, kw] OIHW
bn1/scale, bn1/bias                   bn1.weight, bn1.bias
batch_stats bn1/mean, bn1/var         bn1.running_mean, bn1.running_var
(none)                                bn1.num_batches_tracked  (int64 0)
layer{s}_{i}/conv{k}, bn{k}           layer{s}.{i}.conv{k}, .bn{k}
layer{s}_{i}/downsample_conv, _bn     layer{s}.{i}.downsample.0, .downsample.1
head linear{j}/kernel [in, out]       <head>.{3j}.weight [out, in] (nn.Linear)
head linear{j}/bias                   <head>.{3j}.bias
head bn{j}/...                        <head>.{3j+1}.* (nn.BatchNorm1d)
====================================  ======================================

Heads (projector, predictor) use the ``nn.Sequential`` layout of the
official Barlow Twins ``main.py``: Linear, BatchNorm1d, ReLU, Linear, ...
(the ReLU at index 3j+2 has no tensors).

``num_batches_tracked`` is written as 0: barlow_jax does not count BN
updates, and torch only reads the counter when a BN layer has
``momentum=None``. The running variance is stored as Flax keeps it (the
EMA of the biased batch variance; torch's EMA uses the unbiased one, a
factor n/(n-1) with n = batch x height x width values per channel).
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

# (torch key, Flax collection, path in that collection, kind)
# kind: 'conv' (HWIO <-> OIHW), 'dense' ([in,out] <-> [out,in]), 'plain'.
Entry = Tuple[str, str, Tuple[str, ...], str]

_BLOCK_PARTS = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample_conv", "downsample_bn")
_TORCH_PART = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
_STATS_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


# ----------------------------------------------------------------------------- trees

def to_numpy(x) -> np.ndarray:
    """jax/NumPy/torch array -> NumPy (float arrays as float32)."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
        x = x.numpy()
    a = np.asarray(x)
    if a.dtype.kind == "f" or a.dtype.name == "bfloat16":
        a = a.astype(np.float32)
    return a


def get_path(tree: Mapping, path: Tuple[str, ...], what: str):
    """``tree[path[0]][path[1]]...``; a one-sentence ValueError naming ``what`` when absent."""
    node = tree
    for p in path:
        if not isinstance(node, Mapping) or p not in node:
            raise ValueError(f"The variables have no {what} entry {'/'.join(path)}; pass "
                             f"{{'params': ..., 'batch_stats': ...}} of a barlow_jax ResNet.")
        node = node[p]
    return node


def set_path(tree: Dict, path: Tuple[str, ...], value) -> None:
    """``tree[path[0]]...[path[-1]] = value``, creating the dicts on the way."""
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def backbone_variables(variables: Mapping) -> Dict[str, Any]:
    """The backbone's ``{'params', 'batch_stats'}``, from backbone or SSLNet variables.

    Args:
      variables: the backbone's own variables, the full SSLNet variables
        (whose trees have a ``'backbone'`` subtree, e.g. what
        ``checkpointing.load_variables`` returns) or any object with
        ``params`` and ``batch_stats`` attributes (a TrainState).

    Returns:
      ``{'params': ..., 'batch_stats': ...}`` of the ResNet backbone.

    Raises:
      ValueError: ``variables`` holds no ``'params'``.
    """
    if not isinstance(variables, Mapping) and hasattr(variables, "params"):
        variables = {"params": variables.params, "batch_stats": variables.batch_stats}
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError("Expected Flax variables {'params': ..., 'batch_stats': ...}; got "
                         f"{type(variables).__name__}.")
    params, stats = variables["params"], variables.get("batch_stats") or {}
    if "backbone" in params:
        params, stats = params["backbone"], stats.get("backbone", {})
    return {"params": params, "batch_stats": stats}


def count_parameters(state_dict: Mapping) -> int:
    """Trainable values of a torch-named state dict.

    Args:
      state_dict: torch key names to arrays or tensors.

    Returns:
      The number of weight and bias values (BN running statistics and
      ``num_batches_tracked`` counters are not counted).
    """
    return int(sum(np.size(v) for k, v in state_dict.items() if not k.endswith(_STATS_SUFFIXES)))


# ----------------------------------------------------------------------------- name maps

def _layer_key(name: str) -> Tuple[int, int]:
    m = re.fullmatch(r"layer(\d+)_(\d+)", name)
    return (int(m.group(1)), int(m.group(2)))


def _bn_entries(torch_name: str, path: Tuple[str, ...]) -> List[Entry]:
    return [(f"{torch_name}.weight", "params", path + ("scale",), "plain"),
            (f"{torch_name}.bias", "params", path + ("bias",), "plain"),
            (f"{torch_name}.running_mean", "batch_stats", path + ("mean",), "plain"),
            (f"{torch_name}.running_var", "batch_stats", path + ("var",), "plain")]


def resnet_entries(params: Mapping) -> List[Entry]:
    """The torch <-> Flax correspondence for a barlow_jax ResNet param tree.

    Args:
      params: the backbone's ``params`` tree (or its ``jax.eval_shape``).

    Returns:
      ``(torch key, collection, Flax path, kind)`` tuples in torchvision's
      state-dict order (stem, then layer1.0, layer1.1, ...); kind is
      ``'conv'``, ``'dense'`` or ``'plain'`` (see ``to_torch_layout``).

    Raises:
      ValueError: ``params`` is not a barlow_jax ResNet tree.
    """
    names = set(params)
    layers = sorted((n for n in names if re.fullmatch(r"layer\d+_\d+", n)), key=_layer_key)
    other = names - set(layers) - {"conv1", "bn1"}
    if "conv1" not in names or "bn1" not in names or other:
        raise ValueError(f"Not a barlow_jax ResNet param tree (top-level names {sorted(names)}); "
                         f"pass the backbone's variables or use backbone_variables().")
    out: List[Entry] = [("conv1.weight", "params", ("conv1", "kernel"), "conv")]
    out += _bn_entries("bn1", ("bn1",))
    for layer in layers:
        s, i = _layer_key(layer)
        for part in _BLOCK_PARTS:
            if part not in params[layer]:
                continue
            tname = f"layer{s}.{i}.{_TORCH_PART.get(part, part)}"
            if "conv" in part:
                out.append((f"{tname}.weight", "params", (layer, part, "kernel"), "conv"))
            else:
                out += _bn_entries(tname, (layer, part))
    return out


def head_entries(params: Mapping, prefix: str, batch_stats: Optional[Mapping] = None) -> List[Entry]:
    """Entries for an MLPHead (linear{j}, bn{j}) as nn.Sequential ``prefix.<idx>``.

    A final BN built with ``last_bn_affine='scale'`` (SimCLR) exports only its
    ``weight``; one with ``'none'`` (SimSiam, ``BatchNorm1d(affine=False)``)
    has no ``weight``/``bias`` and only running statistics, as in torch.

    Args:
      params: the head's ``params`` tree.
      prefix: the torch name of the head, e.g. ``'projector'``.
      batch_stats: the head's ``batch_stats`` tree (a BN without params,
        e.g. SimSiam's last one, is found only there).

    Returns:
      ``(torch key, collection, Flax path, kind)`` tuples in layer order.

    Raises:
      ValueError: a module is neither ``linear{j}`` nor ``bn{j}``.
    """
    out: List[Entry] = []
    parsed = []
    batch_stats = batch_stats or {}
    for name in sorted(set(params) | set(batch_stats)):
        m = re.fullmatch(r"(linear|bn)(\d+)", name)
        if m is None:
            raise ValueError(f"Not a barlow_jax MLPHead param tree: unknown module {name!r} "
                             f"under {prefix!r}.")
        parsed.append((int(m.group(2)), m.group(1) == "bn", name))
    for j, is_bn, name in sorted(parsed):
        if not is_bn:
            out.append((f"{prefix}.{3 * j}.weight", "params", (name, "kernel"), "dense"))
            if "bias" in params[name]:
                out.append((f"{prefix}.{3 * j}.bias", "params", (name, "bias"), "plain"))
        else:
            present = set(params.get(name, {})) | {"mean", "var"}
            out += [e for e in _bn_entries(f"{prefix}.{3 * j + 1}", (name,)) if e[2][-1] in present]
    return out


# ----------------------------------------------------------------------------- layouts

def to_torch_layout(a: np.ndarray, kind: str) -> np.ndarray:
    """Flax array -> torch layout: conv HWIO -> OIHW, dense [in, out] -> [out, in]."""
    if kind == "conv":
        a = a.transpose(3, 2, 0, 1)
    elif kind == "dense":
        a = a.T
    return np.ascontiguousarray(a)


def from_torch_layout(a: np.ndarray, kind: str) -> np.ndarray:
    """The inverse of ``to_torch_layout``."""
    if kind == "conv":
        a = a.transpose(2, 3, 1, 0)
    elif kind == "dense":
        a = a.T
    return np.ascontiguousarray(a)
