"""Flax variables -> torch state dicts (NumPy arrays, torchvision names; no torch needed).

``to_torchvision`` gives a torchvision ``resnet18/34/50`` state dict without
``fc`` (the layout of the official Barlow Twins and VICReg ``resnet50.pth``
files), so that::

    m = torchvision.models.resnet50(); m.fc = torch.nn.Identity()
    m.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})   # strict

``to_torch_full`` writes the whole SSL network as ``backbone.*``,
``projector.*``, ``predictor.*`` and, for an EMA target network,
``target.backbone.*`` and ``target.projector.*``. The names and layouts are
those of ``barlow_jax/export/mapping.py``.
"""

from __future__ import annotations

from typing import Dict, List, Mapping

import numpy as np

from barlow_jax.export.mapping import (Entry, backbone_variables, get_path, head_entries,
                                       resnet_entries, to_numpy, to_torch_layout)


def _export(entries: List[Entry], variables: Mapping, prefix: str = "") -> Dict[str, np.ndarray]:
    out: Dict[str, np.ndarray] = {}
    for key, coll, path, kind in entries:
        out[prefix + key] = to_torch_layout(to_numpy(get_path(variables[coll], path, coll)), kind)
        if key.endswith(".running_var"):
            out[prefix + key[:-len("running_var")] + "num_batches_tracked"] = np.array(0, np.int64)
    return out


def to_torchvision(variables: Mapping) -> Dict[str, np.ndarray]:
    """Backbone variables -> torchvision ResNet state dict (no ``fc``), NumPy arrays.

    Args:
      variables: ``{'params', 'batch_stats'}`` of a barlow_jax ResNet, or of
        an SSLNet (the ``backbone`` subtree is used), or a TrainState.

    Returns:
      ``{torchvision key: array}`` in torchvision's order; float arrays are
      float32, ``*.num_batches_tracked`` int64 scalars. Make torch tensors
      with ``{k: torch.from_numpy(v) for k, v in sd.items()}``.

    Raises:
      ValueError: ``variables`` is not a barlow_jax ResNet (or SSLNet).
    """
    bb = backbone_variables(variables)
    return _export(resnet_entries(bb["params"]), bb)


def to_torch_full(variables: Mapping) -> Dict[str, np.ndarray]:
    """SSLNet variables -> one state dict: backbone, heads and EMA target.

    This matches the official Barlow Twins ``BarlowTwins`` module's
    ``state_dict()`` (without DDP's ``module.``), minus its parameterless
    ``bn`` buffers.

    Args:
      variables: SSLNet variables ``{'params': {'backbone', 'projector',
        ...}, 'batch_stats': ..., 'target': ...}`` (``target``, the BYOL
        target network, may be absent or None).

    Returns:
      ``{key: array}`` with keys ``backbone.<torchvision key>``,
      ``projector.<i>.*``, ``predictor.<i>.*`` (if any) and, when there is
      a target network, ``target.backbone.*`` / ``target.projector.*``.

    Raises:
      ValueError: ``variables`` are not SSLNet variables.
    """
    if not isinstance(variables, Mapping) or "backbone" not in variables.get("params", {}):
        raise ValueError("to_torch_full needs SSLNet variables ({'params': {'backbone', "
                         "'projector', ...}, 'batch_stats': ...}); use to_torchvision for a backbone.")

    def net(v: Mapping, prefix: str) -> Dict[str, np.ndarray]:
        params, stats = v["params"], v.get("batch_stats") or {}
        out = _export(resnet_entries(params["backbone"]),
                      {"params": params["backbone"], "batch_stats": stats.get("backbone", {})},
                      prefix + "backbone.")
        for head in ("projector", "predictor"):
            if head in params:
                hv = {"params": params[head], "batch_stats": stats.get(head, {})}
                out.update(_export(head_entries(params[head], head, hv["batch_stats"]), hv, prefix))
        return out

    out = net(variables, "")
    if variables.get("target") is not None:
        out.update(net(variables["target"], "target."))
    return out
