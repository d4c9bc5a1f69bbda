"""Export formats beside ``.pth``: safetensors, and a timm / Hugging Face Hub folder.

``--format=safetensors --out=FILE.safetensors``: the same state dict as the
``.pth`` export (torchvision layout, or ``--full``), written with
``safetensors.numpy`` (no torch needed), the run's step/method/architecture
in the file's metadata, and ``FILE.safetensors.meta.json`` as for ``.pth``.

``--format=timm_hub --out=DIR``: the layout ``timm.create_model('hf-hub:...')``
and ``timm.create_model('local-dir:DIR')`` read, i.e. what
``huggingface_hub.upload_folder`` would publish:

* ``DIR/config.json``: ``architecture`` (timm's name, e.g. ``resnet50``),
  ``num_classes`` 0, ``num_features``, ``global_pool`` and ``pretrained_cfg``
  (input size, interpolation, crop, the run's mean/std, first conv,
  classifier);
* ``DIR/model.safetensors``: the backbone (timm's ResNet uses torchvision's
  key names, so the torchvision state dict without ``fc`` loads strictly
  into ``timm.create_model(arch, num_classes=0)``);
* ``DIR/README.md``: a model card naming the method, the config, the epochs
  trained and the kNN / online-probe / linear-probe numbers measured in the
  workdir (``metrics.jsonl``, ``linear_eval.json``), or "not measured".

A CIFAR-stem backbone (3x3 stride-1 ``conv1``, no max-pool) is no timm or
torchvision architecture: the card then carries a self-contained
``torch_cifar_resnet()`` (the source in ``barlow_jax/export/cifar_stem.py``)
that builds the torchvision ResNet with that stem and loads the file strictly.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Optional

import numpy as np

from barlow_jax.export.cifar_stem import TORCH_CIFAR_RESNET_SOURCE
from barlow_jax.export.files import export_workdir, load_workdir_config

FORMATS = ("pth", "safetensors", "timm_hub")
# timm's ResNet pretrained_cfg defaults (timm/models/resnet.py _cfg)
_TIMM_CROP_PCT = 0.875
_TIMM_INTERPOLATION = "bilinear"


def _import_safetensors():
    try:
        from safetensors import numpy as st_numpy
    except ImportError:
        raise ImportError("Writing .safetensors needs the safetensors package; install it with "
                          "`pip install safetensors` (or `pip install -e .[export]`).") from None
    return st_numpy


def save_safetensors(state: Mapping[str, np.ndarray], path: str,
                     metadata: Optional[Mapping[str, Any]] = None) -> None:
    """Writes a state dict as a ``.safetensors`` file (needs safetensors, not torch).

    Args:
      state: ``{name: array}``; arrays are made contiguous.
      path: the file to write.
      metadata: stored in the file's header; non-string values as JSON.

    Raises:
      ImportError: safetensors is not installed.
      ValueError: ``path`` cannot be written.
    """
    st_numpy = _import_safetensors()
    tensors = {k: np.ascontiguousarray(v) for k, v in state.items()}
    meta = {str(k): v if isinstance(v, str) else json.dumps(v)
            for k, v in (metadata or {}).items()}
    try:
        st_numpy.save_file(tensors, path, metadata=meta)
    except OSError as e:
        raise ValueError(f"Could not write {path} ({e.strerror}); choose another --out.") from None


def load_safetensors(path: str) -> Dict[str, np.ndarray]:
    """Reads a ``.safetensors`` file.

    Args:
      path: the file.

    Returns:
      ``{name: NumPy array}``.
    """
    return dict(_import_safetensors().load_file(path))


def _saver(meta_fields):
    def save(state, out):
        save_safetensors(state, out, metadata=meta_fields)
    return save


def export_safetensors(workdir: str, out: str, step: Optional[int] = None, full: bool = False,
                       log=print) -> Dict[str, Any]:
    """``export_workdir`` written with safetensors instead of torch.save (no torch needed).

    Args:
      workdir: the training run's directory (local or ``gs://...``).
      out: the ``.safetensors`` file to write; ``out + '.meta.json'`` too.
      step: the checkpoint step; None for the latest.
      full: write the ``to_torch_full`` layout instead of the torchvision backbone.
      log: called with each progress / warning line.

    Returns:
      The metadata of ``export_workdir``.

    Raises:
      ImportError: safetensors is not installed.
      FileNotFoundError, ValueError: as ``export_workdir``.
    """
    _import_safetensors()
    return export_workdir(workdir, out, step=step, full=full, log=log,
                                     save=_saver({"format": "barlow_jax torchvision layout"}))


# ----------------------------------------------------------------- timm hub folder

def measured_numbers(workdir: str) -> Dict[str, Any]:
    """What a training run measured, for the model card.

    Args:
      workdir: the training run's directory (local or ``gs://...``).

    Returns:
      ``{'epoch', 'knn': {...}, 'linear': {...}}`` from the last kNN /
      online-probe record of ``metrics.jsonl`` and the result in
      ``linear_eval.json``; keys are absent when not measured.
    """
    from barlow_jax import paths  # the workdir may be gs://... (etils.epath)
    out: Dict[str, Any] = {}
    path = paths.join(workdir, "metrics.jsonl")
    for line in paths.read_text(path).splitlines() if paths.exists(path) else []:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "epoch" in rec:
            out["epoch"] = rec["epoch"]
        if "knn_top1" in rec:
            out["knn"] = {k: rec.get(k) for k in ("step", "knn_top1", "knn_top5",
                                                  "online_test_top1")}
    path = paths.join(workdir, "linear_eval.json")
    res = json.loads(paths.read_text(path)) if paths.exists(path) else {}
    if res.get("final"):
        out["linear"] = {"top1": res["final"]["top1"], "top5": res["final"]["top5"],
                         "epoch": res["final"].get("epoch"),
                         "epochs": res.get("setup", {}).get("epochs"),
                         "complete": bool(res.get("complete", True))}
    return out


def timm_config(arch: Mapping[str, Any], config, num_features: int) -> Dict[str, Any]:
    """timm's Hub ``config.json`` for a backbone without classifier.

    Args:
      arch: the metadata of ``export_workdir`` (``architecture``, ``width``,
        ``cifar_stem``).
      config: the run's ConfigDict (image size, mean/std, method), or None.
      num_features: the pooled feature width.

    Returns:
      The ``config.json`` dict that ``timm.create_model('local-dir:DIR')``
      reads.
    """
    data = config.get("data", {}) if config is not None else {}
    size = int(data.get("image_size", 224) or 224)
    mean = [float(x) for x in data.get("mean", (0.485, 0.456, 0.406))]
    std = [float(x) for x in data.get("std", (0.229, 0.224, 0.225))]
    return {
        "architecture": arch["architecture"],
        "num_classes": 0,
        "num_features": int(num_features),
        "global_pool": "avg",
        "pretrained_cfg": {
            "tag": f"barlow_jax_{config.get('method', 'ssl') if config is not None else 'ssl'}",
            "custom_load": False,
            "input_size": [3, size, size],
            "fixed_input_size": False,
            "interpolation": _TIMM_INTERPOLATION,
            "crop_pct": 1.0 if arch["cifar_stem"] else _TIMM_CROP_PCT,
            "crop_mode": "center",
            "mean": mean,
            "std": std,
            "num_classes": 0,
            "pool_size": [max(size // (1 if arch["cifar_stem"] else 4) // 8, 1)] * 2,
            "first_conv": "conv1",
            "classifier": "fc",
        },
        "barlow_jax": {"width": arch["width"], "cifar_stem": arch["cifar_stem"]},
    }


def _num_features(state: Mapping[str, np.ndarray]) -> int:
    """Channels of the last BN of layer4 (the pooled feature width)."""
    last = max(k for k in state if k.startswith("layer4.") and k.endswith("running_mean"))
    return int(np.asarray(state[last]).shape[0])


def _fmt(x, nd=2):
    return "not measured" if x is None else f"{x:.{nd}f}%"


def model_card(meta: Mapping[str, Any], config, measured: Mapping[str, Any],
               hub_config: Mapping[str, Any]) -> str:
    """The timm_hub folder's README.md.

    Args:
      meta: the metadata of ``export_workdir``.
      config: the run's ConfigDict, or None.
      measured: ``measured_numbers(workdir)``.
      hub_config: ``timm_config(...)``.

    Returns:
      The model card (Markdown with the Hub's YAML header): method,
      training settings, measured numbers and how to load the weights.
    """
    arch, method = meta["architecture"], meta.get("method")
    cfg = config if config is not None else {}
    opt = cfg.get("optimizer", {})
    lines = ["---", "library_name: timm", "tags:", "- image-feature-extraction", "- timm",
             "- self-supervised", f"- {method}", "---", "",
             f"# {arch} pretrained with {method} (barlow_jax)", "",
             f"A {arch}{' with the CIFAR stem' if meta['cifar_stem'] else ''} backbone "
             f"(no classifier, {hub_config['num_features']} features) pretrained "
             f"self-supervised with **{method}** by barlow_jax, exported from step "
             f"{meta['step']} of `{meta['workdir']}`.", "", "## Training", ""]
    epoch = measured.get("epoch")
    lines += [f"- method: `{method}`",
              f"- epochs trained: {'not recorded' if epoch is None else f'{epoch:g}'} "
              f"(step {meta['step']})",
              f"- batch size: {cfg.get('batch_size')} pairs; optimizer "
              f"{opt.get('name')} (lr_weights {opt.get('lr_weights')}, weight decay "
              f"{opt.get('weight_decay')})",
              f"- projector: `{cfg.get('projector', {}).get('spec')}`; image size "
              f"{hub_config['pretrained_cfg']['input_size'][1]}; data "
              f"`{cfg.get('data', {}).get('source')}` {cfg.get('data', {}).get('path', '')}",
              "- the full config is `barlow_jax_config.json` in this folder", "",
              "## Measured in the workdir", ""]
    knn = measured.get("knn") or {}
    lin = measured.get("linear")
    lines += [f"- kNN monitor (k={cfg.get('eval', {}).get('knn_k')}, test split, step "
              f"{knn.get('step', '-')}): top-1 {_fmt(knn.get('knn_top1'))}, top-5 "
              f"{_fmt(knn.get('knn_top5'))}",
              f"- online linear probe (test split): top-1 {_fmt(knn.get('online_test_top1'))}",
              "- linear probe (`python -m barlow_jax.eval.linear`): " +
              (f"top-1 {_fmt(lin['top1'])}, top-5 {_fmt(lin['top5'])} after "
               f"{lin['epoch']}/{lin['epochs']} epochs"
               + ("" if lin["complete"] else " (not finished)") if lin else "not measured"),
              "", "## Use", ""]
    if meta["cifar_stem"]:
        lines += ["The CIFAR stem (3x3 stride-1 `conv1`, no max-pool) is not a timm or "
                  "torchvision architecture; this builds it and loads the weights strictly "
                  "(needs torch, torchvision, safetensors):", "", "```python",
                  TORCH_CIFAR_RESNET_SOURCE.strip(), "",
                  f"model = torch_cifar_resnet({arch!r}, 'model.safetensors')",
                  "model.eval()", "features = model(images)  # images normalised with the "
                  "mean/std of config.json", "```"]
    else:
        lines += ["```python", "import timm",
                  "model = timm.create_model('local-dir:PATH_TO_THIS_FOLDER', pretrained=True, "
                  "num_classes=0)   # or 'hf-hub:USER/REPO'", "model.eval()",
                  "cfg = timm.data.resolve_data_config({}, model=model)",
                  "transform = timm.data.create_transform(**cfg)",
                  "features = model(transform(img).unsqueeze(0))   # "
                  f"[1, {hub_config['num_features']}]", "```", "",
                  f"or `torchvision.models.{arch}()` with `fc = torch.nn.Identity()` and "
                  "`load_state_dict(safetensors.torch.load_file('model.safetensors'))`."]
    return "\n".join(lines) + "\n"


def export_timm_hub(workdir: str, out_dir: str, step: Optional[int] = None,
                    log=print) -> Dict[str, Any]:
    """Writes the folder ``timm.create_model('local-dir:DIR')`` and the Hugging Face Hub read.

    Args:
      workdir: the training run's directory (local or ``gs://...``).
      out_dir: the folder to write (created if needed): ``config.json``,
        ``model.safetensors`` (the backbone), ``README.md`` (the model
        card), ``barlow_jax_config.json`` and ``barlow_jax_export.json``.
      step: the checkpoint step; None for the latest.
      log: called with each warning / summary line.

    Returns:
      The metadata of ``export_workdir`` plus ``hub_config`` and ``measured``.

    Raises:
      ImportError: safetensors is not installed.
      ValueError: ``out_dir`` is a file or cannot be created; as
        ``export_workdir`` otherwise.
    """
    _import_safetensors()
    if os.path.isfile(out_dir):
        raise ValueError(f"--out={out_dir} is a file; --format=timm_hub writes a folder, give a "
                         f"directory name.")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"Could not create {out_dir} ({e.strerror}); choose another --out.") \
            from None
    weights = os.path.join(out_dir, "model.safetensors")
    kept = {}

    def save(state, out):
        kept["state"] = state
        save_safetensors(state, out, metadata={"format": "pt"})

    meta = export_workdir(workdir, weights, step=step, log=lambda s: None, save=save)
    config = load_workdir_config(workdir)
    hub = timm_config(meta, config, _num_features(kept["state"]))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hub, f, indent=2)
    if config is not None:
        with open(os.path.join(out_dir, "barlow_jax_config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=2, sort_keys=True)
    measured = measured_numbers(workdir)
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(meta, config, measured, hub))
    os.replace(weights + ".meta.json", os.path.join(out_dir, "barlow_jax_export.json"))
    for n in meta["notes"]:
        log(f"WARNING: {n}; the model card's torch_cifar_resnet() loads it.")
    log(f"Wrote {out_dir}/: config.json ({hub['architecture']}, {hub['num_features']} "
        f"features), model.safetensors ({meta['tensors']} tensors, {meta['parameters']:,} "
        f"parameters, step {meta['step']}), README.md (model card).")
    return dict(meta, hub_config=hub, measured=measured)
