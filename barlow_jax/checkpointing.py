"""orbax checkpoints: periodic and preemption saves, restore-or-init, eval loading.

Layout of a workdir::

    DIR/config.json               the config of the run (written at the first start)
    DIR/checkpoints/<step>/state  the TrainState (orbax, written atomically)
    DIR/metrics.jsonl             one JSON object per logged step
    DIR/tensorboard/              event files

A checkpoint is only complete once orbax has finalized it (renamed its
temporary folder on disks; written ``commit_success.txt`` on object stores),
so a run killed while saving leaves the previous checkpoints intact.

Evaluation runs use the same ``Checkpointer`` for their epochs
(``Checkpointer(DIR, keep=2, subdir="linear_eval", unit="epoch", keep_setting=None)``),
saving a small JSON ``meta`` dict (the settings and history) beside each state.

The workdir may be any path orbax supports (local, ``gs://``, ...): every
access goes through ``barlow_jax.paths`` (etils.epath). Checkpoints are
topology-free: ``restore`` places the arrays on the caller's mesh and
``restore_raw`` reads them onto one device per process, whatever number of
processes and devices wrote them.
"""

from __future__ import annotations

import errno
import json
import logging as py_logging
from typing import Any, Dict, Optional, Tuple

import jax
import ml_collections
from absl import logging
import numpy as np
import orbax.checkpoint as ocp

from barlow_jax import paths

CONFIG_FILE = "config.json"


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (e.g. a full disk); the message says what to do."""


def is_no_space(error: BaseException) -> bool:
    """True for ENOSPC, raised directly or wrapped by orbax/tensorstore ('No space left')."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(error)
        if "No space left" in text or "os_error_code='28'" in text or "Disk quota" in text:
            return True
        error = error.__cause__ or error.__context__
    return False


class _QuietSaveErrors(py_logging.Filter):
    """Drops orbax's own multi-page error logs of a failed write; the caller says it once."""

    def filter(self, record):
        if record.levelno < py_logging.ERROR or "orbax" not in (record.pathname or ""):
            return True
        error = record.exc_info[1] if record.exc_info else None
        if not (is_no_space(error) or "No space left" in str(record.msg)):
            return True
        from barlow_jax.cli import verbose
        return verbose()


_QUIET = _QuietSaveErrors()

# Keys that may change between a run and its resume (docs/faults.md lists them):
# learning rates and the compute dtype (the NaN advice), the run's length
# (extending a finished run; the schedules are recomputed for the new total),
# logging / checkpoint / evaluation cadence and settings, and where the data and
# caches live. Every other key (method, model, projector, predictor, loss,
# batch size, seed, optimizer kind and its other settings, data source, split,
# placement, image size and augmentation) changes what the checkpoint means and
# is refused. An entry ending in '.' covers a whole section.
RESUMABLE_KEYS = ("optimizer.lr_weights", "optimizer.lr_biases", "compute_dtype",
                  "num_train_steps", "num_epochs",
                  "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
                  "eval_every_steps", "eval.", "data.path", "data.cache_dir",
                  "data.tfds_data_dir", "data.threads", "data.arrays",
                  "profile_steps", "wandb.")


def is_resumable_key(key: str) -> bool:
    return any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE_KEYS)


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


def config_differences(saved: Dict, current: Dict, defaults: Optional[Dict] = None,
                       resumable: bool = False):
    """[(key, saved_value, current_value)] for keys that change the computation.

    A key absent from the saved config (written before the key existed) is
    compatible when the current value is the key's default in ``defaults``.
    With ``resumable=True``: the differences in RESUMABLE_KEYS instead.
    """
    a, b = _flatten(saved), _flatten(current)
    d = _flatten(defaults) if defaults is not None else {}
    diffs = []
    for key in sorted(set(a) | set(b)):
        if is_resumable_key(key) != resumable:
            continue
        if key not in a and key in d and b.get(key) == d[key]:
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            diffs.append((key, a.get(key, "<absent>"), b.get(key, "<absent>")))
    return diffs


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = paths.join(workdir, CONFIG_FILE)
    if not paths.exists(path):
        raise FileNotFoundError(f"{path} does not exist; point --workdir at the directory a "
                                f"training run wrote (it holds config.json and checkpoints/).")
    return ml_collections.ConfigDict(json.loads(paths.read_text(path)))


def write_config(workdir: str, config):
    """Writes ``workdir/config.json`` (atomically). Call it on process 0 only."""
    paths.write_text(paths.join(workdir, CONFIG_FILE),
                     json.dumps(config_to_dict(config), indent=2, sort_keys=True))


def _one_device_per_process_mesh():
    """A mesh of the first local device of every process: each process gets one copy."""
    from jax.sharding import Mesh
    first = {}
    for d in jax.devices():
        first.setdefault(d.process_index, d)
    return Mesh(np.asarray([first[p] for p in sorted(first)]), ("process",))


def _abstract_from_metadata(tree, sharding):
    """ShapeDtypeStructs with ``sharding`` for every array of a saved tree's metadata."""
    def leaf(m):
        if hasattr(m, "shape") and hasattr(m, "dtype"):
            return jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding)
        return m
    return jax.tree.map(leaf, tree, is_leaf=lambda m: hasattr(m, "shape"))


class Checkpointer:
    """A CheckpointManager over ``workdir/<subdir>`` keeping the last ``keep``.

    Each step holds ``state`` (arrays, orbax StandardSave) and optionally
    ``meta`` (a JSON-able dict). ``subdir=""`` keeps the steps in ``workdir``
    itself. ``unit`` ('step', 'epoch') and ``keep_setting`` (the setting that
    sets ``keep``, or None) only word the full-disk message.
    """

    def __init__(self, workdir: str, keep: int = 3, read_only: bool = False, *,
                 subdir: str = "checkpoints", unit: str = "step",
                 keep_setting: Optional[str] = "config.keep_checkpoints"):
        root = paths.absolute(workdir)
        self.directory = paths.join(root, subdir) if subdir else root
        self.unit, self.keep_setting = unit, keep_setting
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                               read_only=read_only)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})
        self._pending = None  # step of the save that may still be writing

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self):
        return list(self.manager.all_steps())

    def save(self, step: int, state, meta: Optional[Dict] = None) -> bool:
        """Saves ``step`` (asynchronously; ``wait`` blocks until it is on disk).

        Args:
          step: the step (or epoch) number the checkpoint is filed under.
          state: a pytree of arrays.
          meta: an optional JSON-able dict saved beside the state (``restore_meta``).

        Returns:
          Whether orbax started a save. A full disk raises CheckpointSaveError
          after removing the half-written folder, leaving the previous
          checkpoints as they were.
        """
        with self._guard():  # the previous (asynchronous) save must have succeeded
            self.manager.wait_until_finished()
        self._pending = int(step)
        items = {"state": ocp.args.StandardSave(state)}
        if meta is not None:
            items["meta"] = ocp.args.JsonSave(meta)
        with self._guard(step):
            return self.manager.save(int(step), args=ocp.args.Composite(**items), force=True)

    def _guard(self, step=None):
        checkpointer = self

        class Guard:
            def __enter__(self):
                py_logging.getLogger("absl").addFilter(_QUIET)  # background threads log too

            def __exit__(self, kind, error, tb):
                if step is None and checkpointer._pending is not None:
                    step_ = checkpointer._pending
                else:
                    step_ = step
                if error is None or not isinstance(error, Exception):
                    return False
                if is_no_space(error) or isinstance(error, OSError):
                    removed = checkpointer.remove_partial()
                    kept = [s for s in checkpointer._complete_steps() if s != step_]
                    reason = ("no space left on the device" if is_no_space(error)
                              else f"{type(error).__name__}: {error}")
                    unit, setting = checkpointer.unit, checkpointer.keep_setting
                    raise CheckpointSaveError(
                        f"Could not write the checkpoint{'' if step_ is None else f' of {unit} {step_}'}"
                        f" to {checkpointer.directory} ({reason}); "
                        + (f"removed the half-written {', '.join(removed)}; " if removed else "")
                        + (f"the latest complete checkpoint is {unit} {max(kept)}, "
                           if kept else "no complete checkpoint was written, ")
                        + "free disk space" + (f" (or lower {setting})" if setting else "")
                        + " and rerun the same command to resume.") from error
                return False

        return Guard()

    def _complete_steps(self):
        steps = []
        for entry in paths.listdir(self.directory):
            folder = paths.join(self.directory, entry)
            if entry.isdigit() and paths.isdir(folder) and (
                    not paths.is_remote(folder)
                    or paths.exists(paths.join(folder, "commit_success.txt"))):
                steps.append(int(entry))
        return sorted(steps)

    def remove_partial(self):
        """Deletes ``<step>.orbax-checkpoint-tmp*`` folders (only process 0 writes them)."""
        if jax.process_index() != 0:
            return []
        removed = []
        for path in paths.glob(self.directory, "*.orbax-checkpoint-tmp*"):
            try:
                paths.rmtree(path)
            except OSError:
                pass
            removed.append(paths.basename(path))
        return removed

    def restore(self, template, step: Optional[int] = None):
        """Restores into the structure, shapes, dtypes and shardings of ``template``."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))
        return restored["state"]

    def restore_meta(self, step: Optional[int] = None) -> Dict:
        """The ``meta`` dict saved with ``step`` (latest when None); {} when none was saved."""
        step = self.latest_step() if step is None else step
        if not paths.exists(paths.join(self.directory, str(step), "meta")):
            return {}
        return dict(self.manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"])

    def restore_raw(self, step: Optional[int] = None):
        """Restores the saved tree as nested dicts of host numpy arrays.

        Topology-free: the arrays are read onto one device of each process
        (replicated), whatever mesh wrote them, so a checkpoint of 2 processes
        x 4 devices loads in 1 process on 1 device.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {self.directory}; train first or point "
                                    f"--workdir at a directory holding checkpoints/.")
        if step not in self.all_steps():
            raise ValueError(f"No checkpoint for step {step} in {self.directory}; available "
                             f"steps: {self.all_steps()}.")
        from jax.sharding import NamedSharding, PartitionSpec as P
        metadata = self.manager.item_metadata(step)["state"]
        tree = getattr(metadata, "tree", metadata)
        abstract = _abstract_from_metadata(tree, NamedSharding(_one_device_per_process_mesh(), P()))
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))
        return jax.tree.map(np.asarray, restored["state"]), step

    def wait(self):
        with self._guard():
            self.manager.wait_until_finished()

    def close(self):
        try:
            with self._guard():
                self.manager.wait_until_finished()
        finally:
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
