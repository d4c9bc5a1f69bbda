"""What the linear probe and semi-supervised fine-tuning share.

* ``sgd_update``: torch.optim.SGD (momentum, no dampening, no Nesterov,
  coupled weight decay on every parameter, as BT evaluate.py uses it):
      d = g + wd * p;  buf = m * buf + d;  p = p - lr * buf
  with the learning rate applied after momentum, so a per-epoch change of
  lr behaves as in PyTorch.
* ``cosine_lr``: ``CosineAnnealingLR(T_max=epochs)`` stepped once per
  epoch (BT evaluate.py): lr_e = base * (1 + cos(pi * e / epochs)) / 2 for
  epoch e = 0 .. epochs-1, constant within an epoch.
* ``topk_correct``: top-1 / top-5 hit counts of logits.
* ``EpochCheckpoints``: orbax CheckpointManager under ``DIR/<name>/`` keeping
  the last two epochs: ``state`` (arrays) + ``meta`` (JSON: epoch, history,
  what was evaluated). A rerun resumes after the last saved epoch.
* ``cli``: flag parsing for ``python -m barlow_jax.eval.{linear,semisup}``:
  ``--workdir`` (required), ``--config.KEY=VALUE`` overriding the
  pretraining config saved in ``DIR/config.json``, ``--<section>.KEY=VALUE``
  overriding the evaluation's own defaults.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

TOPK = (1, 5)


def sgd_update(params, buf, grads, lr, *, momentum: float, weight_decay: float):
    """One torch-SGD step; ``lr`` is a scalar or a pytree of scalars like params."""
    if not isinstance(lr, dict):
        lr = jax.tree.map(lambda _: lr, params)
    d = jax.tree.map(lambda g, p: g + weight_decay * p, grads, params)
    buf = jax.tree.map(lambda b, x: momentum * b + x, buf, d)
    params = jax.tree.map(lambda p, b, r: p - r * b, params, buf, lr)
    return params, buf


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    return 0.5 * base * (1.0 + math.cos(math.pi * epoch / epochs))


def masked_cross_entropy(logits, labels, mask):
    """Mean cross-entropy over the rows where mask is 1 (padding rows are 0)."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def topk_correct(logits, labels, mask=None) -> jax.Array:
    """[2] counts of rows whose label is in the top-1 / top-5 logits (ties: lower index)."""
    k = min(TOPK[-1], logits.shape[-1])
    top = jax.lax.top_k(logits, k)[1]
    hit = top == labels[:, None]
    m = jnp.ones(labels.shape, jnp.float32) if mask is None else mask
    return jnp.stack([jnp.sum(hit[:, 0] * m), jnp.sum(jnp.any(hit, axis=1) * m)])


def padded_batches(n: int, batch_size: int, n_dev: int, order: Optional[np.ndarray] = None):
    """Yields (indices [B_pad], mask [B_pad]) covering ``order`` (default range(n)).

    Every batch has ``batch_size`` real rows except the last (as a PyTorch
    DataLoader with drop_last=False) and is padded with index 0 / mask 0 to
    B_pad = batch_size rounded up to a multiple of ``n_dev``, so one
    compilation serves all batches.
    """
    order = np.arange(n) if order is None else order
    b_pad = -(-batch_size // n_dev) * n_dev
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        mask = np.zeros(b_pad, np.float32)
        mask[:len(idx)] = 1.0
        yield np.concatenate([idx, np.zeros(b_pad - len(idx), idx.dtype)]), mask


def pad_batch(batch: Dict[str, np.ndarray], b_pad: int) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Pads a streamed {'image', 'label'} batch to b_pad rows; returns (batch, mask)."""
    n = len(batch["label"])
    if n > b_pad:
        raise ValueError(f"A data batch has {n} rows, more than the {b_pad} requested.")
    mask = np.zeros(b_pad, np.float32)
    mask[:n] = 1.0
    out = {k: np.concatenate([np.asarray(v), np.zeros((b_pad - n,) + np.shape(v)[1:],
                                                      np.asarray(v).dtype)])
           for k, v in batch.items()}
    return out, mask


class EpochCheckpoints:
    """Per-epoch orbax checkpoints (state arrays + JSON meta) under ``directory``."""

    def __init__(self, directory: str, keep: int = 2):
        import orbax.checkpoint as ocp
        from barlow_jax import paths  # local or gs://... (etils.epath)
        self._ocp = ocp
        self.directory = paths.absolute(directory)
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("state", "meta"))

    def latest_epoch(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, epoch: int, state, meta: Dict):
        ocp = self._ocp
        self.manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def restore(self, epoch: int, template) -> Tuple[Any, Dict]:
        ocp = self._ocp
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        out = self.manager.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"])

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def resolve_run(workdir: str, section, config=None, variables=None, pretrain_step=None,
                mesh=None):
    """What the linear probe and fine-tuning start from.

    Loads ``variables`` (at ``section.step``, latest when < 0) and the saved
    config from ``workdir`` unless given; a given ``config`` (e.g. with CLI
    overrides) replaces the saved one. Returns (config, variables,
    pretrain_step, mesh, train_split, test_split); the splits default to the
    pretraining config's ``data.split`` / ``data.eval_split``.
    """
    from barlow_jax import parallel
    if variables is None:
        from barlow_jax import checkpointing
        saved, variables, pretrain_step = checkpointing.load_variables(
            workdir, None if int(section.step) < 0 else int(section.step))
        config = config if config is not None else saved
    mesh = mesh if mesh is not None else parallel.make_mesh()
    train_split = section.train_split or config.data.split
    test_split = section.test_split or config.data.eval_split
    return config, variables, pretrain_step, mesh, train_split, test_split


def check_resumable(meta: Dict, expected: Dict, directory: str):
    """Refuses to continue epochs that were trained under different settings."""
    diffs = [k for k in expected if meta.get("setup", {}).get(k) != expected[k]]
    if diffs:
        shown = ", ".join(f"{k}: {meta.get('setup', {}).get(k)!r} saved vs {expected[k]!r} now"
                          for k in diffs[:4])
        raise ValueError(f"{directory} holds epochs trained with other settings ({shown}); "
                         f"delete that folder to start over, or rerun with the saved settings.")


def summarize(history: List[Dict]) -> Dict:
    """best (max top-1 / top-5 over epochs, as BT evaluate.py) and final accuracies."""
    if not history:
        return {"best": None, "final": None}
    best1 = max(history, key=lambda h: h["top1"])
    return {"best": {"top1": best1["top1"], "top1_epoch": best1["epoch"],
                     "top5": max(h["top5"] for h in history)},
            "final": {"top1": history[-1]["top1"], "top5": history[-1]["top5"],
                      "epoch": history[-1]["epoch"]}}


class StopOnSignal:
    """SIGTERM/SIGINT -> a flag the epoch loops check between batches, acknowledged at once.

    The epoch in progress is dropped (epochs are the unit of saving); the
    epochs already finished are in their checkpoint folder, so a rerun of the
    same command resumes after the last one.
    """

    def __init__(self, what: str, log: Callable[[str], None] = print):
        self.what, self.log, self.received, self._old = what, log, None, {}

    def __enter__(self):
        import signal
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        import signal
        if self.received is None:
            self.received = signal.Signals(signum).name
            self.log(f"{self.what}: received {self.received}; stopping after the current batch "
                     f"(the unfinished epoch is dropped, finished epochs are saved).")

    def __exit__(self, *exc):
        import signal
        for sig, old in self._old.items():
            signal.signal(sig, old)


def eta_text(history: List[Dict], start_epoch: int, epochs: int) -> str:
    """'ETA h:mm:ss' from the mean time of this session's epochs."""
    from barlow_jax.metrics import format_seconds
    mine = [h["seconds"] for h in history if h["epoch"] > start_epoch]
    if not mine:
        return "ETA ?"
    return f"ETA {format_seconds(sum(mine) / len(mine) * (epochs - history[-1]['epoch']))}"


def write_json(path: str, payload: Dict):
    """Atomic rewrite of a results file, by process 0 only (local or gs://...)."""
    from barlow_jax import paths
    if jax.process_index() != 0:
        return
    paths.write_text(path, json.dumps(payload, indent=2, sort_keys=True))


def cli(section: str, default_section, run: Callable[..., Dict],
        extra_flags: Callable[[], None] = lambda: None):
    """Defines the flags (the pretraining config comes from --workdir) and runs ``run``.

    ``run(workdir=..., config=..., <section>=..., flags=FLAGS)`` is called inside
    absl's app.run; ValueError / FileNotFoundError become one line on stderr
    and exit status 1.
    """
    from absl import app, flags, logging
    from ml_collections import config_flags
    from barlow_jax import checkpointing, distributed
    from barlow_jax.cli import argv_value

    workdir = argv_value(sys.argv, "workdir")
    if not workdir:
        print("error: pass --workdir=DIR, the directory of a pretraining run.", file=sys.stderr)
        sys.exit(2)
    try:
        base = checkpointing.load_config(workdir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    try:  # config_flags applies the --config.* / --section.* overrides while defining
        flags.DEFINE_string("workdir", None, "Directory of the pretraining run.")
        config_flags.DEFINE_config_dict("config", base, "Pretraining config (DIR/config.json).")
        config_flags.DEFINE_config_dict(section, default_section, f"{section} settings.")
        extra_flags()
        distributed.define_flags(flags)  # the checkpoint loads on this run's processes/devices
    except (AttributeError, KeyError) as e:  # an override names a key that does not exist
        from barlow_jax.cli import unknown_key_message
        print(unknown_key_message(e, f"--config.* / --{section}.*",
                                  "see docs/evaluation.md for the keys"), file=sys.stderr, flush=True)
        sys.exit(2)

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
        logging.set_verbosity(logging.WARNING)
        f = flags.FLAGS
        from barlow_jax.cli import fail
        try:
            distributed.initialize_from_flags(f)
        except distributed.DistributedInitError as e:
            fail(str(e), 1, e)
        try:
            run(workdir=f.workdir, config=f.config, flags=f, **{section: f[section].value})
        except (ValueError, FileNotFoundError) as e:
            from barlow_jax.cli import fail
            fail(str(e), 1, e)

    if "verbose" not in flags.FLAGS:
        flags.DEFINE_bool("verbose", False, "Print tracebacks with error messages.")
    app.run(main)
