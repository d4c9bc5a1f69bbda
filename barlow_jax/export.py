"""Weights between barlow_jax (Flax) and PyTorch / torchvision.

Export: ``to_torchvision(variables)`` turns the Flax ResNet's variables into
a torchvision ``resnet18/34/50`` state dict without ``fc`` (the layout of the
official Barlow Twins and VICReg ``resnet50.pth`` files), so that::

    m = torchvision.models.resnet50(); m.fc = torch.nn.Identity()
    m.load_state_dict(torch.load('resnet50.pth'))          # strict

Import: ``from_torchvision(state_dict)`` is the inverse; it reads those
official files into ``barlow_jax.models.resnet50()`` variables.

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
(the ReLU at index 3j+2 has no tensors). ``to_torch_full`` writes the whole
SSL network as ``backbone.*``, ``projector.*``, ``predictor.*`` and, for an
EMA target network, ``target.backbone.*`` and ``target.projector.*``.

``num_batches_tracked`` is written as 0: barlow_jax does not count BN
updates, and torch only reads the counter when a BN layer has
``momentum=None``. The running variance is stored as Flax keeps it (the
EMA of the biased batch variance; torch's EMA uses the unbiased one, a
factor n/(n-1) with n = batch x height x width values per channel).

CLI (torch needed only here, imported lazily)::

    python -m barlow_jax.export --workdir=DIR [--step=N] --out=resnet50.pth [--full]
    python -m barlow_jax.export --import=resnet50.pth --out=variables.msgpack
    python -m barlow_jax.export --workdir=DIR --format=safetensors --out=resnet50.safetensors
    python -m barlow_jax.export --workdir=DIR --format=timm_hub --out=HUB_DIR

(the last two in barlow_jax/export_formats.py; they need ``safetensors``, not torch).

See docs/export.md for the snippets and the measured parity numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

# (torch key, Flax collection, path in that collection, kind)
# kind: 'conv' (HWIO <-> OIHW), 'dense' ([in,out] <-> [out,in]), 'plain'.
Entry = Tuple[str, str, Tuple[str, ...], str]

_BLOCK_PARTS = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample_conv", "downsample_bn")
_TORCH_PART = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
_STEM_WARNING = ("the CIFAR stem (3x3 stride-1 conv1, no max-pool) is not torchvision's: "
                 "load it into torchvision after m.conv1 = torch.nn.Conv2d(3, {w}, 3, 1, 1, "
                 "bias=False) and m.maxpool = torch.nn.Identity()")


# ----------------------------------------------------------------------------- trees

def _to_numpy(x) -> np.ndarray:
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


def _get(tree: Mapping, path: Tuple[str, ...], what: str):
    node = tree
    for p in path:
        if not isinstance(node, Mapping) or p not in node:
            raise ValueError(f"The variables have no {what} entry {'/'.join(path)}; pass "
                             f"{{'params': ..., 'batch_stats': ...}} of a barlow_jax ResNet.")
        node = node[p]
    return node


def _set(tree: Dict, path: Tuple[str, ...], value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def backbone_variables(variables: Mapping) -> Dict[str, Any]:
    """``{'params', 'batch_stats'}`` of the backbone, from backbone or SSLNet variables.

    Accepts the backbone's own variables, the full SSLNet variables (whose
    trees have a ``'backbone'`` subtree, e.g. what
    ``checkpointing.load_variables`` returns) or any object with ``params``
    and ``batch_stats`` attributes (a TrainState).
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

    In torchvision's state-dict order (stem, then layer1.0, layer1.1, ...).
    Raises ValueError for a tree that is not a barlow_jax ResNet.
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


def _to_torch_layout(a: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        a = a.transpose(3, 2, 0, 1)
    elif kind == "dense":
        a = a.T
    return np.ascontiguousarray(a)


def _from_torch_layout(a: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        a = a.transpose(2, 3, 1, 0)
    elif kind == "dense":
        a = a.T
    return np.ascontiguousarray(a)


def _export(entries: List[Entry], variables: Mapping, prefix: str = "") -> Dict[str, np.ndarray]:
    out: Dict[str, np.ndarray] = {}
    for key, coll, path, kind in entries:
        out[prefix + key] = _to_torch_layout(_to_numpy(_get(variables[coll], path, coll)), kind)
        if key.endswith(".running_var"):
            out[prefix + key[:-len("running_var")] + "num_batches_tracked"] = np.array(0, np.int64)
    return out


# ----------------------------------------------------------------------------- export

def to_torchvision(variables: Mapping) -> Dict[str, np.ndarray]:
    """Backbone variables -> torchvision ResNet state dict (no ``fc``), NumPy arrays.

    ``variables``: ``{'params', 'batch_stats'}`` of a barlow_jax ResNet, or
    of an SSLNet (the ``backbone`` subtree is used). Float arrays come back
    float32, ``*.num_batches_tracked`` int64 scalars. Make torch tensors with
    ``{k: torch.from_numpy(v) for k, v in sd.items()}``.
    """
    bb = backbone_variables(variables)
    return _export(resnet_entries(bb["params"]), bb)


def to_torch_full(variables: Mapping) -> Dict[str, np.ndarray]:
    """SSLNet variables -> one state dict: backbone, heads and EMA target.

    Keys: ``backbone.<torchvision key>``, ``projector.<i>.*``,
    ``predictor.<i>.*`` (if any), and when ``variables['target']`` holds the
    BYOL target network ``target.backbone.*`` / ``target.projector.*``.
    This matches the official Barlow Twins ``BarlowTwins`` module's
    ``state_dict()`` (without DDP's ``module.``), minus its parameterless
    ``bn`` buffers.
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


# ----------------------------------------------------------------------------- import

def backbone_state_dict(obj: Mapping) -> Dict[str, Any]:
    """The torchvision-named backbone entries of a torch state dict or checkpoint.

    Accepts a plain torchvision state dict, a dict wrapping one under
    ``'model'`` or ``'state_dict'`` (e.g. the official ``checkpoint.pth``),
    and keys prefixed with ``module.``, ``backbone.`` or
    ``module.backbone.`` (DDP / SSL wrappers; other keys are then dropped).
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
    """``{'name', 'width', 'cifar_stem'}`` of a torchvision-named ResNet state dict.

    ``name`` is one of barlow_jax.models.STAGE_SIZES, found from the block
    type (``conv3`` present = Bottleneck) and the number of blocks per layer;
    ``cifar_stem`` is True for a 3x3 ``conv1``; ``width`` = conv1's outputs.
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

    ``state_dict`` holds torch tensors or NumPy arrays, with the names of
    torchvision's resnet18/34/50 (see ``backbone_state_dict`` for accepted
    wrappers and prefixes). ``fc.*`` and ``num_batches_tracked`` are
    ignored. The architecture is inferred (``infer_architecture``); build
    the matching model with ``barlow_jax.models.build_resnet(**arch)``.

    Raises ValueError naming the missing keys, the keys with wrong shapes,
    and (when ``strict``) the unexpected keys. Arrays come back as float32
    NumPy arrays.
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
        a = _from_torch_layout(_to_numpy(sd[key]), kind)
        want = tuple(_get(shapes[coll], path, coll).shape)
        if a.shape != want:
            bad.append(f"{key} {tuple(np.shape(sd[key]))} (expected "
                       f"{tuple(_to_torch_layout(np.empty(want, np.int8), kind).shape)})")
        _set(variables[coll], path, a)
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
        idx, leaf, a = int(m.group(1)), m.group(2), _to_numpy(v)
        if idx % 3 == 0:
            name = f"linear{idx // 3}"
            if leaf == "weight":
                params.setdefault(name, {})["kernel"] = _from_torch_layout(a, "dense")
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
    """Inverse of ``to_torch_full``: SSLNet ``{'params', 'batch_stats', 'target'}``."""

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


# ----------------------------------------------------------------------------- files

def count_parameters(state_dict: Mapping) -> int:
    """Trainable values (weights and biases; not BN running stats or counters)."""
    return int(sum(np.size(v) for k, v in state_dict.items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))))


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ImportError("Writing or reading .pth files needs PyTorch; install it with "
                          "`pip install torch`.") from None
    return torch


def _check_out_path(out: str) -> None:
    parent = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise ValueError(f"--out={out} is a directory; give a file name such as {out}/resnet50.pth.")
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"The output directory {parent} does not exist; create it or "
                                f"choose another --out.")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"The output directory {parent} is not writable; choose another --out.")


def _check_workdir(workdir: str) -> None:
    # Which steps exist (and the messages for a missing or unknown step) is
    # left to checkpointing.load_variables, which asks orbax.
    from barlow_jax import paths  # local or gs://... (etils.epath)
    if not paths.isdir(workdir):
        raise FileNotFoundError(f"The workdir {workdir} does not exist; pass the --workdir of "
                                f"a training run.")
    if not paths.isdir(paths.join(workdir, "checkpoints")):
        raise FileNotFoundError(f"No checkpoint in {workdir}: it has no checkpoints/ directory; "
                                f"pass the --workdir of a run that saved one.")


def _absolute(workdir: str) -> str:
    from barlow_jax import paths
    return paths.absolute(workdir)


def _load_variables(workdir: str, step: Optional[int]):
    from barlow_jax.checkpointing import load_variables
    return load_variables(workdir, step)


def _save(torch, state: Mapping[str, np.ndarray], out: str) -> None:
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    try:
        torch.save(tensors, out)
    except OSError as e:
        raise ValueError(f"Could not write {out} ({e.strerror}); choose another --out.") from None


def export_workdir(workdir: str, out: str, step: Optional[int] = None, full: bool = False,
                   log=print, save=None) -> Dict[str, Any]:
    """Writes the checkpoint of ``workdir`` (latest or ``step``) to ``out`` (.pth).

    Backbone only (torchvision layout) by default; ``full`` writes
    ``to_torch_full``. Also writes ``out + '.meta.json'`` (architecture,
    step, whether it is a torchvision layout, key layout) and returns it.
    ``save(state, out)`` replaces torch.save (export_formats: safetensors).
    """
    _check_out_path(out)
    _check_workdir(workdir)
    if save is None:
        torch = _import_torch()
        save = lambda state, path: _save(torch, state, path)  # noqa: E731
    start = time.perf_counter()
    log(f"Exporting the {'latest' if step is None else f'step {step}'} checkpoint of "
        f"{workdir} to {out} ...")
    config, variables, step = _load_variables(workdir, step)
    state = to_torch_full(variables) if full else to_torchvision(variables)
    arch = infer_architecture(state)
    model_cfg = getattr(config, "model", None)
    if model_cfg is not None and getattr(model_cfg, "name", arch["name"]) != arch["name"]:
        raise ValueError(f"config.model.name={model_cfg.name!r} but the checkpoint holds a "
                         f"{arch['name']}; the workdir's config.json does not match its checkpoint.")
    torchvision_arch = arch["name"] in ("resnet18", "resnet34", "resnet50") and arch["width"] == 64
    notes = []
    if arch["cifar_stem"]:
        notes.append(_STEM_WARNING.format(w=arch["width"]))
    if not torchvision_arch:
        notes.append(f"{arch['name']} with width {arch['width']} has torchvision's key names but "
                     f"no torchvision constructor builds it")
    meta = {
        "barlow_jax_meta": 1, "workdir": _absolute(workdir), "step": int(step),
        "method": getattr(config, "method", None), "layout": "full" if full else "torchvision",
        "architecture": arch["name"], "width": arch["width"], "cifar_stem": arch["cifar_stem"],
        "torchvision_compatible": torchvision_arch and not arch["cifar_stem"],
        "parameters": count_parameters(state), "tensors": len(state),
    }
    meta["notes"] = notes
    save(state, out)
    with open(out + ".meta.json", "w") as f:
        json.dump(meta, f, indent=1)
    for n in notes:
        log(f"WARNING: {n}.")
    log(f"Wrote {out}: {arch['name']}{' (CIFAR stem)' if arch['cifar_stem'] else ''} from step "
        f"{step} of {workdir}, {meta['layout']} layout, {len(state)} tensors, "
        f"{meta['parameters']:,} parameters, in {time.perf_counter() - start:.1f}s; notes in "
        f"{out}.meta.json.")
    return meta


def load_workdir_config(workdir: str):
    """The run's config.json as a ConfigDict, or None when it is missing."""
    from barlow_jax.checkpointing import load_config
    try:
        return load_config(workdir)
    except FileNotFoundError:
        return None


# The CIFAR-stem backbone in PyTorch: written verbatim into timm_hub model cards
# (export_formats.py) and run by torch_cifar_resnet() below, so both stay the same.
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
    """torchvision ResNet with the CIFAR stem, loading ``weights`` strictly (needs torchvision)."""
    scope: Dict[str, Any] = {}
    exec(compile(TORCH_CIFAR_RESNET_SOURCE, "barlow_jax.export.TORCH_CIFAR_RESNET_SOURCE",
                 "exec"), scope)
    return scope["torch_cifar_resnet"](name, weights)


def import_pth(path: str, out: str, log=print) -> Dict[str, Any]:
    """Reads a torchvision ``.pth`` and writes Flax variables to ``out`` (msgpack).

    The file holds ``{'params', 'batch_stats', 'architecture': {'name',
    'width', 'cifar_stem'}}`` serialised with ``flax.serialization
    .msgpack_serialize``; read it back with ``read_variables``.
    """
    from flax import serialization

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist; pass --import=<a torchvision .pth file>.")
    _check_out_path(out)
    torch = _import_torch()
    sd = _load_state_dict(torch, path)
    try:
        variables = from_torchvision(sd, strict=False)
        arch = infer_architecture(sd)
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{path} is not a torchvision ResNet state dict ({type(e).__name__}: "
                         f"{e}); pass the .pth of a torchvision resnet18/34/50 (e.g. one "
                         f"written by `python -m barlow_jax.export --workdir=...`).") from e
    blob = serialization.msgpack_serialize(dict(variables, architecture=arch))
    try:
        with open(out, "wb") as f:
            f.write(blob)
    except OSError as e:
        raise ValueError(f"Could not write {out} ({e.strerror}); choose another --out.") from None
    n = count_parameters(to_torchvision(variables))
    log(f"Wrote {out}: {arch['name']}{' (CIFAR stem)' if arch['cifar_stem'] else ''} variables "
        f"from {path}, {n:,} parameters. Use barlow_jax.models.build_resnet(**architecture).")
    return arch


def _load_state_dict(torch, path: str):
    """``torch.load(weights_only=True)`` of ``path``, a one-sentence ValueError otherwise."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError (not a zip), EOFError, ...
        detail = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        why = ("it holds Python objects that torch.load(weights_only=True) refuses to run"
               if "weights_only" in str(e) or "Weights only" in str(e)
               else f"torch.load cannot read it: {detail}")
        raise ValueError(f"{path} is not a loadable PyTorch state dict ({why}); pass a .pth "
                         f"saved with torch.save(model.state_dict(), path).") from e
    for key in ("state_dict", "model"):  # common wrappers around a state dict
        if isinstance(sd, dict) and isinstance(sd.get(key), dict) and not any(
                hasattr(v, "shape") for v in sd.values()):
            sd = sd[key]
    if not isinstance(sd, dict) or not any(hasattr(v, "shape") for v in sd.values()):
        raise ValueError(f"{path} holds a {type(sd).__name__} without tensors, not a state "
                         f"dict; pass a .pth saved with torch.save(model.state_dict(), path).")
    return sd


def read_variables(path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(variables, architecture)`` from a file written by ``import_pth``."""
    from flax import serialization

    with open(path, "rb") as f:
        d = serialization.msgpack_restore(f.read())
    return {"params": d["params"], "batch_stats": d["batch_stats"]}, dict(d["architecture"])


# ----------------------------------------------------------------------------- CLI

def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m barlow_jax.export", description=(
        "Export a barlow_jax checkpoint as a torchvision ResNet state dict, or import one."))
    ap.add_argument("--workdir", help="training run directory (holds checkpoints/<step>/)")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    ap.add_argument("--out", required=True, help=".pth to write (export) or .msgpack (import); "
                    "a folder for --format=timm_hub")
    ap.add_argument("--format", default="pth", choices=("pth", "safetensors", "timm_hub"),
                    help="export file format (docs/export.md)")
    ap.add_argument("--full", action="store_true",
                    help="also write projector/predictor/target (keys in docs/export.md)")
    ap.add_argument("--import", dest="import_path", default=None,
                    help="torchvision .pth to convert into Flax variables (msgpack)")
    ap.add_argument("--verbose", action="store_true", help="print tracebacks with errors")
    from barlow_jax import distributed  # a checkpoint of any topology loads on this one
    distributed.add_argparse_flags(ap)
    args = ap.parse_args(argv)
    if args.verbose:
        os.environ["BARLOW_JAX_VERBOSE"] = "1"
    if (args.workdir is None) == (args.import_path is None):
        ap.error("pass exactly one of --workdir (export) and --import (import)")
    try:
        if args.workdir is not None:
            distributed.initialize_from_flags(args)
    except distributed.DistributedInitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        if args.import_path is not None:
            import_pth(args.import_path, args.out)
        elif args.format != "pth":  # export_formats.py
            from barlow_jax import export_formats
            if args.format == "safetensors":
                export_formats.export_safetensors(args.workdir, args.out, step=args.step,
                                                  full=args.full)
            else:
                if args.full:
                    ap.error("--full is not available with --format=timm_hub (backbone only)")
                export_formats.export_timm_hub(args.workdir, args.out, step=args.step)
        else:
            export_workdir(args.workdir, args.out, step=args.step, full=args.full)
    except (FileNotFoundError, ValueError, ImportError) as e:
        from barlow_jax.cli import verbose
        if verbose():
            import traceback
            traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
