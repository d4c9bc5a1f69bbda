"""Linear probe on the frozen backbone (Barlow Twins evaluate.py, ``--weights freeze``).

    python -m barlow_jax.eval.linear --workdir=DIR [--linear.KEY=VALUE] [--config.KEY=VALUE]

Protocol (defaults, ``get_default_linear_config``; FIELD_NOTES §5): the
backbone of the pretraining checkpoint in inference mode (BN running
statistics, no gradient); a linear layer (weights N(0, 0.01), bias 0) on
the pooled features; cross-entropy; 100 epochs of SGD (momentum 0.9,
weight decay 1e-6 on weight and bias, torch semantics), batch 256, lr 0.3
with a per-epoch cosine (``CosineAnnealingLR``); the last partial batch of
an epoch is kept (drop_last=False).

Inputs:

* large images (``config.data.image_size > 64``, streamed sources): every
  epoch reads ``data.eval_batches(..., mode='train')`` (random-resized-crop
  + flip); the test split uses ``mode='test'`` (resize 256, centre crop 224).
* small images (<= 64 px, e.g. CIFAR at 32): the train split is held as
  uint8 and augmented on the device with a random-resized-crop (area
  ``crop_scale``, aspect ``crop_ratio``, bicubic) back to the image size and
  a horizontal flip, the recipe solo-learn uses for CIFAR linear probes;
  the test images are used as they are.
* ``--linear.augment=False``: no train augmentation, so the train features
  are computed once and only the linear layer runs per epoch (seconds per
  epoch instead of a backbone pass). Faster, not the paper protocol.

Test features are computed once (the backbone is frozen). Every epoch is
checkpointed (orbax) under ``DIR/linear_eval/``; rerunning the command
resumes after the last saved epoch with the same result as a straight run.
Results: ``DIR/linear_eval.json`` (top-1 / top-5 in percent per epoch, best
and final, the settings used), rewritten after every epoch.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from barlow_jax import parallel
from barlow_jax.eval import features as feats_lib
from barlow_jax.eval import epochs as epochs_lib
from barlow_jax.eval import sgd
from barlow_jax.eval import supervised as sup

SMALL_IMAGE = feats_lib.SMALL_IMAGE


def get_default_linear_config() -> ml_collections.ConfigDict:
    """Settings of the linear probe; every key can be set with --linear.KEY=VALUE."""
    return ml_collections.ConfigDict(dict(
        epochs=100,
        batch_size=256,
        lr=0.3,                  # evaluate.py default (the README command uses 0.1)
        momentum=0.9,
        weight_decay=1e-6,
        init_std=0.01,
        augment=True,            # False: train features precomputed once (fast, not the protocol)
        crop_scale=(0.08, 1.0),  # small-image train crop (large images: data.eval_batches)
        crop_ratio=(3.0 / 4.0, 4.0 / 3.0),
        flip_prob=0.5,
        step=-1,                 # pretraining checkpoint to evaluate; -1 = latest
        train_split="",          # '' = config.data.split
        test_split="",           # '' = config.data.eval_split
        train_examples=0,        # seeded random subset for quick runs; 0 = all
        test_examples=0,
        feature_batch_size=256,  # images per backbone call when embedding
        seed=0,
        stop_after_epochs=0,     # end this run (resumably) after N epochs; 0 = run to the end
    ))


def small_image_crop(linear) -> ml_collections.ConfigDict:
    """A view config for barlow_jax.data.augment_jax.view: crop + flip, nothing else."""
    return ml_collections.ConfigDict(dict(
        crop_scale=tuple(linear.crop_scale), crop_ratio=tuple(linear.crop_ratio),
        flip_prob=float(linear.flip_prob), jitter_prob=0.0, brightness=0.0, contrast=0.0,
        saturation=0.0, hue=0.0, grayscale_prob=0.0, blur_prob=0.0, blur_sigma=(0.1, 2.0),
        solarize_prob=0.0, solarize_threshold=0.5))


def init_head(key, dim: int, num_classes: int, std: float) -> Dict[str, jax.Array]:
    return {"kernel": std * jax.random.normal(key, (dim, num_classes), jnp.float32),
            "bias": jnp.zeros((num_classes,), jnp.float32)}


def head_logits(head, feats):
    return jnp.dot(feats, head["kernel"], precision=jax.lax.Precision.HIGHEST) + head["bias"]


class LinearTrainer:
    """Jitted steps of the probe: head update from features or from images.

    All arrays are global: batches sharded over 'data', head and frozen
    variables replicated; plain jit, so results do not depend on the device
    count (beyond float summation order).
    """

    def __init__(self, linear, mesh, *, config=None):
        self.mesh = mesh
        self.batch_sharding = parallel.batch_sharding(mesh)
        self.replicated = parallel.replicated(mesh)
        momentum, wd = float(linear.momentum), float(linear.weight_decay)

        def update(head, buf, feats, labels, mask, lr):
            loss, grads = jax.value_and_grad(
                lambda h: sgd.masked_cross_entropy(head_logits(h, feats), labels, mask))(head)
            head, buf = sgd.sgd_update(head, buf, grads, lr, momentum=momentum, weight_decay=wd)
            return head, buf, loss

        self.feature_step = jax.jit(update)
        self.eval_counts = jax.jit(lambda head, feats, labels, mask: sgd.topk_correct(
            head_logits(head, feats), labels, mask))
        if config is not None:
            from barlow_jax.data import augment_jax
            from barlow_jax.models import build_backbone
            backbone = build_backbone(config)
            crop = small_image_crop(linear)
            data_config = config.data

            def image_step(head, buf, bvars, images, labels, mask, key_data, lr):
                if images.dtype == jnp.uint8:  # device-side small-image augmentation
                    key = jax.random.wrap_key_data(key_data)
                    x = augment_jax.view(images, key, crop, data_config, size=images.shape[1])
                else:
                    x = images.astype(jnp.float32)
                feats = backbone.apply(bvars, x, train=False).astype(jnp.float32)
                return update(head, buf, jax.lax.stop_gradient(feats), labels, mask, lr)

            self.image_step = jax.jit(image_step)

    def put_batch(self, x):
        return parallel.host_to_global(x, self.batch_sharding)

    def put_replicated(self, tree):
        return jax.tree.map(lambda x: parallel.host_to_global(np.asarray(x), self.replicated), tree)

    def evaluate(self, head, feats: np.ndarray, labels: np.ndarray, batch_size: int = 4096):
        """(top1, top5) in percent of the head on precomputed features."""
        counts = np.zeros(2)
        n_dev = self.mesh.devices.size
        for idx, mask in sgd.padded_batches(len(labels), batch_size, n_dev):
            counts += np.asarray(self.eval_counts(head, self.put_batch(feats[idx]),
                                                  self.put_batch(labels[idx]),
                                                  self.put_batch(mask)))
        return tuple(float(100.0 * c / len(labels)) for c in counts)


def train_head_on_features(train_feats, train_labels, test_feats, test_labels, *, linear,
                           num_classes: int, mesh, directory: Optional[str] = None,
                           setup: Optional[Dict] = None,
                           log: Callable[[str], None] = print) -> Dict:
    """The probe on precomputed features (``augment=False``).

    Args:
      train_feats, train_labels: [N, D] features and [N] labels of the train split.
      test_feats, test_labels: the same for the test split.
      linear: the probe's settings (``get_default_linear_config``).
      num_classes: the number of outputs of the linear layer.
      mesh: the device mesh (batches are sharded over its 'data' axis).
      directory: the epoch checkpoint folder; None saves nothing and never resumes.
      setup: extra settings recorded in (and checked on resume against) the checkpoints.
      log: receives the progress lines.

    Returns:
      The results dict of ``run_linear_eval``.
    """
    return _train(linear=linear, mesh=mesh, num_classes=num_classes, directory=directory,
                  setup=setup or {}, log=log, test=(test_feats, test_labels),
                  train_feats=(np.asarray(train_feats, np.float32),
                               np.asarray(train_labels, np.int32)))


def _train(*, linear, mesh, num_classes, directory, setup, log, test, train_feats=None,
           train_images=None, stream=None, config=None, bvars=None,
           write: Optional[Callable[[Dict], None]] = None) -> Dict:
    """One epoch function for the three input modes, run by ``epochs.run_epochs``.

    Exactly one of ``train_feats`` (features, labels), ``train_images``
    (uint8 images, labels) or ``stream`` (epoch -> iterable of batches) is set.
    """
    trainer = LinearTrainer(linear, mesh, config=config if train_feats is None else None)
    n_dev = mesh.devices.size
    test_feats, test_labels = test
    dim = int(test_feats.shape[1])
    epochs, bsz, seed = int(linear.epochs), int(linear.batch_size), int(linear.seed)
    head = init_head(jax.random.key(seed), dim, num_classes, float(linear.init_std))
    buf = jax.tree.map(jnp.zeros_like, head)
    state = trainer.put_replicated({"head": head, "buf": buf})
    setup = dict(setup, epochs=epochs, batch_size=bsz, lr=float(linear.lr),
                 weight_decay=float(linear.weight_decay), momentum=float(linear.momentum),
                 seed=seed, feature_dim=dim, num_classes=int(num_classes))
    if bvars is not None:
        bvars = trainer.put_replicated(bvars)

    def train_epoch(epoch, state, stopped):
        lr = sgd.cosine_lr(float(linear.lr), epoch, epochs)
        lr_dev = trainer.put_replicated(np.float32(lr))
        head, buf = state["head"], state["buf"]
        losses = []
        if stream is not None:
            b_pad = sgd.padded_size(bsz, n_dev)
            for batch in stream(epoch):
                if stopped():
                    break
                batch, mask = sgd.pad_batch(batch, b_pad)
                head, buf, loss = trainer.image_step(
                    head, buf, bvars, trainer.put_batch(batch["image"]),
                    trainer.put_batch(batch["label"].astype(np.int32)),
                    trainer.put_batch(mask), None, lr_dev)
                losses.append((loss, float(mask.sum())))
        else:
            data, labels = train_feats if train_feats is not None else train_images
            order = np.random.default_rng([seed, epoch]).permutation(len(labels))
            epoch_key = jax.random.fold_in(jax.random.key(seed + 1), epoch)
            for i, (idx, mask) in enumerate(sgd.padded_batches(len(labels), bsz, n_dev, order)):
                if stopped():
                    break
                args = (trainer.put_batch(data[idx]), trainer.put_batch(labels[idx]),
                        trainer.put_batch(mask))
                if train_feats is not None:
                    head, buf, loss = trainer.feature_step(head, buf, *args, lr_dev)
                else:
                    key = trainer.put_replicated(
                        jax.random.key_data(jax.random.fold_in(epoch_key, i)))
                    head, buf, loss = trainer.image_step(head, buf, bvars, *args, key, lr_dev)
                losses.append((loss, float(mask.sum())))
        return {"head": head, "buf": buf}, losses, {"lr": lr}

    results, state, stopped_by = epochs_lib.run_epochs(
        "linear probe", epochs, state, setup, train_epoch=train_epoch,
        evaluate=lambda state: trainer.evaluate(state["head"], test_feats, test_labels),
        directory=directory, stop_after=int(linear.stop_after_epochs), write=write, log=log)
    return dict(results, stopped_by=stopped_by, head=jax.tree.map(np.asarray, state["head"]))


def run_linear_eval(workdir: str, linear=None, *, config=None, variables=None,
                    pretrain_step: Optional[int] = None, mesh=None,
                    log: Callable[[str], None] = print) -> Dict:
    """Runs (or resumes) the probe of the checkpoint in ``workdir``.

    Epoch checkpoints go to ``workdir/linear_eval/``, the results to
    ``workdir/linear_eval.json`` (rewritten after every epoch).

    Args:
      workdir: the pretraining run's directory (local or gs://...).
      linear: the probe's settings; None uses ``get_default_linear_config()``.
      config: the pretraining config; None loads ``workdir/config.json`` (a
        given one, e.g. with CLI overrides, replaces the saved one).
      variables: the pretrained variables; None loads the checkpoint at
        ``linear.step`` (latest when < 0) with ``checkpointing.load_variables``.
      pretrain_step: the step ``variables`` come from (recorded in the setup).
      mesh: the device mesh; None uses all devices.
      log: receives the progress lines.

    Returns:
      ``{'best', 'final', 'epochs', 'setup', 'complete', 'stopped_by',
      'head'}``: best and final top-1 / top-5 in percent, one record per
      epoch, the settings, whether all epochs are done, the signal that
      stopped the run (or None) and the linear layer as NumPy arrays.
    """
    linear = linear if linear is not None else get_default_linear_config()
    config, variables, pretrain_step, mesh, train_split, test_split = sup.resolve_run(
        workdir, linear, config, variables, pretrain_step, mesh)
    dc = config.data
    embedder = feats_lib.Embedder(config, mesh, batch_size=int(linear.feature_batch_size))
    t0 = time.perf_counter()
    test = embedder.split_features(variables, dc, test_split, seed=int(linear.seed) + 1,
                                   max_examples=int(linear.test_examples))
    log(f"linear probe: {len(test.labels)} test features ({test_split}) in "
        f"{time.perf_counter() - t0:.1f}s")
    small = int(dc.image_size) <= SMALL_IMAGE
    mode = "features" if not linear.augment else ("device_crop" if small else "stream")
    kwargs = {}
    t0 = time.perf_counter()
    if mode == "features":
        train = embedder.split_features(variables, dc, train_split,
                                        max_examples=int(linear.train_examples),
                                        seed=int(linear.seed))
        kwargs["train_feats"] = (train.images, train.labels)
        n_train, labels_max = len(train.labels), int(train.labels.max())
    elif mode == "device_crop":
        train = feats_lib.load_labelled(dc, train_split, max_examples=int(linear.train_examples),
                                        seed=int(linear.seed),
                                        batch_size=int(linear.feature_batch_size))
        kwargs["train_images"] = (train.images, train.labels)
        n_train, labels_max = len(train.labels), int(train.labels.max())
    else:
        if int(linear.train_examples) > 0:
            raise ValueError("--linear.train_examples needs --linear.augment=False or images of "
                             f"at most {SMALL_IMAGE} pixels; streamed epochs use the whole split.")
        from barlow_jax import data as data_lib
        n_train = int(data_lib.num_examples(dc, train_split))
        labels_max = int(test.labels.max())
        kwargs["stream"] = lambda epoch: feats_lib.eval_stream(
            dc, train_split, batch_size=int(linear.batch_size), mode="train",
            seed=int(linear.seed), epoch=epoch)
    if mode != "features":
        kwargs["config"] = config
        kwargs["bvars"] = feats_lib.backbone_variables(variables)
    log(f"linear probe: {n_train} train examples ({train_split}), input mode {mode!r}, "
        f"prepared in {time.perf_counter() - t0:.1f}s")
    num_classes = max(int(dc.get("num_classes", 0) or 0), labels_max + 1,
                      int(test.labels.max()) + 1)
    setup = {"pretrain_step": None if pretrain_step is None else int(pretrain_step),
             "mode": mode, "train_split": train_split, "test_split": test_split,
             "num_train": n_train, "num_test": int(len(test.labels))}
    from barlow_jax import paths  # the workdir may be gs://... (etils.epath)
    json_path = paths.join(workdir, "linear_eval.json")
    result = _train(linear=linear, mesh=mesh, num_classes=num_classes,
                    directory=paths.join(workdir, "linear_eval"), setup=setup, log=log,
                    test=(test.images, test.labels),
                    write=lambda r: epochs_lib.write_json(json_path, dict(
                        r, protocol=linear.to_dict())), **kwargs)
    if result["complete"]:
        log(f"linear probe done: final top1 {result['final']['top1']:.2f} "
            f"top5 {result['final']['top5']:.2f}, best top1 {result['best']['top1']:.2f}; "
            f"{json_path}")
    return result


if __name__ == "__main__":
    sup.cli("linear", get_default_linear_config(),
            lambda workdir, config, flags, linear: run_linear_eval(workdir, linear, config=config))
