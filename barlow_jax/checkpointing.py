"""orbax checkpoints: periodic and preemption saves, restore-or-init, eval loading.

Layout of a workdir::

    DIR/config.json               the config of the run (written at the first start)
    DIR/checkpoints/<step>/state  the TrainState (orbax, written atomically)
    DIR/metrics.jsonl             one JSON object per logged step
    DIR/tensorboard/              event files

A checkpoint is only complete once orbax has renamed its temporary folder,
so a run killed while saving leaves the previous checkpoints intact.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

import jax
import ml_collections
from absl import logging
import numpy as np
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"

# Keys that may change between a run and its resume without changing what is
# computed (logging, checkpoint cadence, evaluation, where the data lives).
RESUMABLE_KEYS = ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
                  "eval_every_steps", "eval.", "data.path", "data.cache_dir",
                  "data.tfds_data_dir", "data.threads", "data.arrays")


def config_to_dict(config) -> Dict[str, Any]:
    """JSON-normalised (tuples become lists) dict of a ConfigDict."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: Dict, current: Dict, defaults: Optional[Dict] = None):
    """[(key, saved_value, current_value)] for keys that change the computation.

    A key absent from the saved config (written before the key existed) is
    compatible when the current value is the key's default in ``defaults``.
    """
    a, b = _flatten(saved), _flatten(current)
    d = _flatten(defaults) if defaults is not None else {}
    diffs = []
    for key in sorted(set(a) | set(b)):
        if any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE_KEYS):
            continue
        if key not in a and key in d and b.get(key) == d[key]:
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            diffs.append((key, a.get(key, "<absent>"), b.get(key, "<absent>")))
    return diffs


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist; point --workdir at the directory a "
                                f"training run wrote (it holds config.json and checkpoints/).")
    with open(path, encoding="utf-8") as f:
        return ml_collections.ConfigDict(json.load(f))


class Checkpointer:
    """A CheckpointManager over ``workdir/checkpoints`` keeping the last ``keep``."""

    def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                               read_only=read_only)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state",))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self):
        return list(self.manager.all_steps())

    def save(self, step: int, state) -> bool:
        saved = self.manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state)), force=True)
        return saved

    def restore(self, template, step: Optional[int] = None):
        """Restores into the structure, shapes, dtypes and shardings of ``template``."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))
        return restored["state"]

    def restore_raw(self, step: Optional[int] = None):
        """Restores the saved tree as nested dicts of host numpy arrays."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {self.directory}; train first or point "
                                    f"--workdir at a directory holding checkpoints/.")
        if step not in self.all_steps():
            raise ValueError(f"No checkpoint for step {step} in {self.directory}; available "
                             f"steps: {self.all_steps()}.")
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore()))
        return jax.tree.map(np.asarray, restored["state"]), step

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def load_variables(workdir: str, step: Optional[int] = None) -> Tuple[Any, Dict, int]:
    """(config, variables, step) of a training run, for evaluation and export.

    ``variables = {'params', 'batch_stats', 'target'}``: the online SSLNet's
    parameters and BatchNorm statistics (``{'backbone', 'projector',
    ['predictor']}``) and the EMA target's (or None). Arrays are NumPy.
    """
    config = load_config(workdir)
    level = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # orbax warns about every read-only option at load
    try:
        ckpt = Checkpointer(workdir, read_only=True)
        try:
            raw, step = ckpt.restore_raw(step)
        finally:
            ckpt.close()
    finally:
        logging.set_verbosity(level)
    variables = {"params": raw["params"], "batch_stats": raw["batch_stats"],
                 "target": raw.get("target")}
    return config, variables, step
