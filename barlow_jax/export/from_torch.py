"""torch state dicts -> Flax variables (the import direction).

``from_torchvision`` reads a torchvision ResNet state dict (e.g. the
official Barlow Twins / VICReg ``resnet50.pth``) into
``barlow_jax.models.build_resnet(**infer_architecture(sd))`` variables;
``from_torch_full`` reverses ``to_torch_full``. The names and layouts are
those of ``barlow_jax/export/mapping.py``.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from barlow_jax.export.mapping import (from_torch_layout, get_path, resnet_entries, set_path,
                                       to_numpy, to_torch_layout)


def backbone_state_dict(obj: Mapping) -> Dict[str, Any]:
    """The torchvision-named backbone entries of a torch state dict or checkpoint.

    Args:
      obj: a plain torchvision state dict, a dict wrapping one under
        ``'model'`` or ``'state_dict'`` (e.g. the official
        ``checkpoint.pth``), or one whose keys are prefixed with
        ``module.``, ``backbone.`` or ``module.backbone.`` (DDP / SSL
        wrappers; the keys without the prefix are then dropped).

    Returns:
      ``{torchvision key: tensor or array}`` without wrapper or prefix.

    Raises:
      ValueError: ``obj`` is not a mapping or has no ``conv1.weight``.
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f"Expected a state dict (a mapping of names to tensors); got "
                         f"{type(obj).__name__}.")
    for wrapper in ("model", "state_dict"):
        if "conv1.weight" not in obj and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    for prefix in ("", "module.", "backbone.", "module.backbone."):
        if prefix + "conv1.weight" in obj:
            return {k[len(prefix):]: v for k, v in obj.items() if k.startswith(prefix)}
    raise ValueError("No 'conv1.weight' in the state dict (first keys: "
                     f"{list(obj)[:4]}), so it is not a torchvision ResNet; pass the backbone's "
                     "state dict (e.g. the official resnet50.pth).")


def infer_architecture(state_dict: Mapping) -> Dict[str, Any]:
    """The barlow_jax architecture of a torchvision-named ResNet state dict.

    Args:
      state_dict: as accepted by ``backbone_state_dict``.

    Returns:
      ``{'name', 'width', 'cifar_stem'}``, the arguments of
      ``barlow_jax.models.build_resnet``: ``name`` is one of
      ``barlow_jax.models.STAGE_SIZES``, found from the block type
      (``conv3`` present = Bottleneck) and the number of blocks per layer;
      ``width`` is conv1's output channels; ``cifar_stem`` is True for a
      3x3 ``conv1``.

    Raises:
      ValueError: the blocks per layer match no known ResNet.
    """
    from barlow_jax.models.resnet import STAGE_SIZES, Bottleneck

    sd = backbone_state_dict(state_dict)
    bottleneck = any(re.fullmatch(r"layer\d+\.\d+\.conv3\.weight", k) for k in sd)
    stages = tuple(len({int(m.group(1)) for k in sd if (m := re.match(rf"layer{s}\.(\d+)\.", k))})
                   for s in range(1, 5))
    for name, (sizes, block) in STAGE_SIZES.items():
        if tuple(sizes) == stages and (block is Bottleneck) == bottleneck:
            break
    else:
        raise ValueError(f"The state dict has {stages} {'Bottleneck' if bottleneck else 'Basic'} "
                         f"blocks per layer, which matches none of {sorted(STAGE_SIZES)}.")
    w = np.shape(sd["conv1.weight"])
    return {"name": name, "width": int(w[0]), "cifar_stem": int(w[-1]) == 3}


def _summary(keys: List[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def from_torchvision(state_dict: Mapping, *, strict: bool = True) -> Dict[str, Any]:
    """torchvision ResNet state dict -> barlow_jax ResNet ``{'params', 'batch_stats'}``.

    The architecture is inferred (``infer_architecture``); build the
    matching model with ``barlow_jax.models.build_resnet(**arch)``.

    Args:
      state_dict: torch tensors or NumPy arrays with the names of
        torchvision's resnet18/34/50 (see ``backbone_state_dict`` for the
        accepted wrappers and prefixes). ``fc.*`` and
        ``num_batches_tracked`` are ignored.
      strict: refuse keys that a torchvision ResNet of that architecture
        does not have.

    Returns:
      ``{'params': ..., 'batch_stats': ...}`` with float32 NumPy arrays.

    Raises:
      ValueError: naming the missing keys, the keys with wrong shapes and
        (when ``strict``) the unexpected keys.
    """
    import jax
    import jax.numpy as jnp

    from barlow_jax.models.resnet import build_resnet

    sd = backbone_state_dict(state_dict)
    arch = infer_architecture(sd)
    model = build_resnet(arch["name"], width=arch["width"], cifar_stem=arch["cifar_stem"])
    size = 32 if arch["cifar_stem"] else 64
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    entries = resnet_entries(shapes["params"])
    expected = {e[0] for e in entries}
    missing = [e[0] for e in entries if e[0] not in sd]
    unexpected = [k for k in sd if k not in expected and not k.startswith("fc.")
                  and not (k.endswith(".num_batches_tracked")
                           and k[:-len("num_batches_tracked")] + "running_var" in expected)]
    if missing:
        raise ValueError(f"The state dict lacks {len(missing)} {arch['name']} key(s): "
                         f"{_summary(missing)}; pass a complete torchvision backbone state dict.")
    if unexpected and strict:
        raise ValueError(f"The state dict has {len(unexpected)} key(s) that a torchvision "
                         f"{arch['name']} does not: {_summary(unexpected)}; remove them or pass "
                         f"strict=False.")
    variables: Dict[str, Any] = {"params": {}, "batch_stats": {}}
    bad = []
    for key, coll, path, kind in entries:
        a = from_torch_layout(to_numpy(sd[key]), kind)
        want = tuple(get_path(shapes[coll], path, coll).shape)
        if a.shape != want:
            bad.append(f"{key} {tuple(np.shape(sd[key]))} (expected "
                       f"{tuple(to_torch_layout(np.empty(want, np.int8), kind).shape)})")
        set_path(variables[coll], path, a)
    if bad:
        raise ValueError(f"{len(bad)} tensor(s) have the wrong shape for {arch['name']}: "
                         f"{_summary(bad, 3)}.")
    return variables


def _head_from_torch(sd: Mapping, prefix: str) -> Tuple[Dict, Dict]:
    params: Dict[str, Any] = {}
    stats: Dict[str, Any] = {}
    for key, v in sd.items():
        m = re.fullmatch(rf"{re.escape(prefix)}\.(\d+)\.(\w+)", key)
        if m is None or m.group(2) == "num_batches_tracked":
            continue
        idx, leaf, a = int(m.group(1)), m.group(2), to_numpy(v)
        if idx % 3 == 0:
            name = f"linear{idx // 3}"
            if leaf == "weight":
                params.setdefault(name, {})["kernel"] = from_torch_layout(a, "dense")
            else:
                params.setdefault(name, {})["bias"] = a
        elif idx % 3 == 1:
            name = f"bn{idx // 3}"
            if leaf in ("weight", "bias"):
                params.setdefault(name, {})["scale" if leaf == "weight" else "bias"] = a
            else:
                stats.setdefault(name, {})["mean" if leaf == "running_mean" else "var"] = a
        else:
            raise ValueError(f"{key}: index {idx} of an nn.Sequential head should be a ReLU "
                             f"(no tensors) in the Linear-BN-ReLU layout of docs/export.md.")
    return params, stats


def from_torch_full(state_dict: Mapping) -> Dict[str, Any]:
    """The inverse of ``to_torch_full``.

    Args:
      state_dict: ``backbone.*``, ``projector.*``, ``predictor.*`` and
        optionally ``target.*`` keys, as ``to_torch_full`` writes them.

    Returns:
      SSLNet variables ``{'params', 'batch_stats', 'target'}`` (``target``
      is None when the state dict has no ``target.*`` network).

    Raises:
      ValueError: there is no ``backbone.conv1.weight``, or as
        ``from_torchvision`` for the backbones.
    """

    def net(prefix: str) -> Optional[Dict[str, Any]]:
        sub = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if "backbone.conv1.weight" not in sub:
            return None
        bb = from_torchvision({k[9:]: v for k, v in sub.items() if k.startswith("backbone.")})
        v = {"params": {"backbone": bb["params"]}, "batch_stats": {"backbone": bb["batch_stats"]}}
        for head in ("projector", "predictor"):
            p, s = _head_from_torch(sub, head)
            if p:
                v["params"][head] = p
                if s:
                    v["batch_stats"][head] = s
        return v

    main = net("")
    if main is None:
        raise ValueError("No 'backbone.conv1.weight' key: not a to_torch_full state dict; use "
                         "from_torchvision for a plain torchvision backbone.")
    main["target"] = net("target.")
    return main
