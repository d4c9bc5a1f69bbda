"""Checkpoint -> file and file -> Flax variables: what ``python -m barlow_jax.export`` runs.

``export_workdir`` writes the checkpoint of a training run (``--workdir``,
local or ``gs://...``) as a torch ``.pth`` (or, through its ``save``
argument, the safetensors files of ``formats.py``) plus a ``.meta.json``;
``import_pth`` reads a torchvision ``.pth`` into a Flax msgpack file that
``read_variables`` loads. torch is imported only here, lazily, and only for
``.pth`` files.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from barlow_jax.export.cifar_stem import STEM_WARNING
from barlow_jax.export.from_torch import from_torchvision, infer_architecture
from barlow_jax.export.mapping import count_parameters
from barlow_jax.export.to_torch import to_torch_full, to_torchvision


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
    """Writes the checkpoint of a training run as a torch state dict file.

    Args:
      workdir: the training run's directory (local or ``gs://...``), which
        holds ``checkpoints/<step>/`` and ``config.json``.
      out: the file to write, e.g. ``resnet50.pth``; its directory must exist.
      step: the checkpoint step; None for the latest.
      full: write ``to_torch_full`` (backbone, heads, EMA target) instead of
        the torchvision backbone of ``to_torchvision``.
      log: called with each progress / warning line.
      save: ``save(state, out)`` writes the ``{key: array}`` state dict;
        None for ``torch.save`` of torch tensors (needs torch).
        ``formats.export_safetensors`` passes a safetensors writer.

    Returns:
      The metadata also written to ``out + '.meta.json'``: ``workdir``,
      ``step``, ``method``, ``layout`` (``'torchvision'`` or ``'full'``),
      ``architecture``, ``width``, ``cifar_stem``,
      ``torchvision_compatible``, ``parameters``, ``tensors``, ``notes``.

    Raises:
      FileNotFoundError: the workdir, its checkpoints or ``out``'s
        directory do not exist.
      ValueError: ``out`` cannot be written, the checkpoint cannot be read
        or does not match the run's config.
      ImportError: ``save`` is None and torch is not installed.
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
        notes.append(STEM_WARNING.format(w=arch["width"]))
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
    """The config a training run saved.

    Args:
      workdir: the training run's directory (local or ``gs://...``).

    Returns:
      Its ``config.json`` as a ConfigDict, or None when there is none.
    """
    from barlow_jax.checkpointing import load_config
    try:
        return load_config(workdir)
    except FileNotFoundError:
        return None


# The CIFAR-stem backbone in PyTorch: written verbatim into timm_hub model cards
def import_pth(path: str, out: str, log=print) -> Dict[str, Any]:
    """Converts a torchvision ``.pth`` file into a Flax variables file (needs torch).

    Args:
      path: a ``.pth`` holding a torchvision resnet18/34/50 state dict
        (``fc.*`` and unknown extra keys are ignored; see
        ``from_torchvision``).
      out: the msgpack file to write. It holds ``{'params', 'batch_stats',
        'architecture': {'name', 'width', 'cifar_stem'}}`` serialised with
        ``flax.serialization.msgpack_serialize``; read it back with
        ``read_variables``.
      log: called with the summary line.

    Returns:
      The architecture, ``{'name', 'width', 'cifar_stem'}``: the arguments
      of ``barlow_jax.models.build_resnet``.

    Raises:
      FileNotFoundError: ``path`` or ``out``'s directory does not exist.
      ValueError: ``path`` is not a loadable torchvision ResNet state dict,
        or ``out`` cannot be written.
      ImportError: torch is not installed.
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
    """Loads a file written by ``import_pth``.

    Args:
      path: the msgpack file.

    Returns:
      ``(variables, architecture)``: ``{'params', 'batch_stats'}`` and
      ``{'name', 'width', 'cifar_stem'}``, so that
      ``build_resnet(**architecture).apply(variables, x, train=False)`` runs.
    """
    from flax import serialization

    with open(path, "rb") as f:
        d = serialization.msgpack_restore(f.read())
    return {"params": d["params"], "batch_stats": d["batch_stats"]}, dict(d["architecture"])
