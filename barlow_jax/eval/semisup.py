"""Semi-supervised fine-tuning on 1% / 10% of the labels (BT evaluate.py ``--weights finetune``).

    python -m barlow_jax.eval.semisup --workdir=DIR --fraction=0.01 [--semisup.KEY=VALUE]

Protocol (defaults, ``get_default_semisup_config``): the whole network
(backbone of the pretraining checkpoint + a new linear layer, N(0, 0.01)
weights, zero bias) is trained with cross-entropy for 20 epochs, batch 256,
SGD momentum 0.9, weight decay 0, per-epoch cosine, two learning rates:
head 0.5, backbone 0.005 at 1% (the current facebookresearch/barlowtwins
README command, ``--train-perc 1 ... --lr-backbone 0.005``; the README before
June 2021 said 0.002) and 0.005 at 10% (FIELD_NOTES §5);
``--semisup.lr_backbone`` overrides both.

BatchNorm (``--semisup.bn``): 'train' (default) as evaluate.py, which calls
``model.train()`` when fine-tuning: batch statistics and running-average
updates; under jit over the sharded global batch the statistics are those
of the GLOBAL batch (like SyncBatchNorm; evaluate.py's DDP model uses
per-GPU statistics of 32 images at batch 256 on 8 GPUs). 'frozen': BN in
inference mode with the pretraining running statistics, its affine
parameters still trained. Test accuracy always uses the running statistics.

Labelled subset: with ``--semisup.subset_file`` (SimCLR's
``imagenet_subsets/1percent.txt`` / ``10percent.txt``, one file name per
line such as ``n01440764_10026.JPEG``), the train-split files with those
names (folder source); a 1000-class folder dataset without that file is
refused, so ImageNet numbers always use the standard lists. Otherwise a
class-balanced subset: from every class, max(1, round(fraction * n_c))
examples drawn with a generator seeded by (seed, class).

A last partial batch is filled up with examples from the start of the
epoch's order (as torch's DistributedSampler pads): they enter the BN
statistics but not the loss. Inputs, checkpoints and resume follow the
linear probe (``linear.py``): images <= 64 px are held as uint8 and
cropped + flipped on the device; larger ones stream through
``data.eval_batches(mode='train')``. Checkpoints: ``DIR/semisup_<pct>/``;
results: ``DIR/semisup_eval.json``, one entry per fraction ("1%", "10%").
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from barlow_jax import parallel
from barlow_jax.data import normalize
from barlow_jax.eval import features as feats_lib
from barlow_jax.eval import linear as linear_lib
from barlow_jax.eval import epochs as epochs_lib
from barlow_jax.eval import sgd
from barlow_jax.eval import supervised as sup

BN_MODES = ("train", "frozen")


def get_default_semisup_config() -> ml_collections.ConfigDict:
    """Settings of the fine-tuning; every key can be set with --semisup.KEY=VALUE."""
    return ml_collections.ConfigDict(dict(
        epochs=20,
        batch_size=256,
        lr_head=0.5,
        lr_backbone=-1.0,        # -1: 0.005 at 1% and 10% (module doc)
        momentum=0.9,
        weight_decay=0.0,
        init_std=0.01,
        bn="train",              # 'train' | 'frozen' (module doc)
        subset_file="",          # SimCLR list of file names (folder sources, ImageNet)
        crop_scale=(0.08, 1.0),  # small-image train crop (large images: data.eval_batches)
        crop_ratio=(3.0 / 4.0, 4.0 / 3.0),
        flip_prob=0.5,
        step=-1,                 # pretraining checkpoint; -1 = latest
        train_split="",          # '' = config.data.split
        test_split="",           # '' = config.data.eval_split
        test_examples=0,         # seeded random test subset for quick runs; 0 = all
        eval_batch_size=256,
        seed=0,
        stop_after_epochs=0,     # end this run (resumably) after N epochs; 0 = to the end
    ))


def default_lr_backbone(fraction: float) -> float:
    del fraction   # the official README: 0.005 at 1%; FIELD_NOTES §5: 0.005 at 10%
    return 0.005


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices: max(1, round(fraction * n_c)) per class c, seeded by (seed, c)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"--fraction={fraction} must be in (0, 1], e.g. 0.01 or 0.1.")
    picked = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(members))))
        picked.append(np.random.default_rng([seed, int(c)]).permutation(members)[:k])
    return np.sort(np.concatenate(picked))


def subset_from_file(data_config, split: str, path: str, log=print) -> np.ndarray:
    """Sorted positions of the files listed in ``path`` within a folder split."""
    if data_config.source != "folder":
        raise ValueError("--semisup.subset_file needs config.data.source='folder' (an "
                         "ImageNet-style tree); other sources use class-balanced subsets.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--semisup.subset_file={path} does not exist; download "
                                f"SimCLR's imagenet_subsets/1percent.txt or 10percent.txt.")
    with open(path, encoding="utf-8") as f:
        wanted = {line.strip() for line in f if line.strip()}
    from barlow_jax.data import folder
    index = folder.index_split(data_config, split)
    names = np.array([os.path.basename(str(p)) for p in index.paths])
    found = np.flatnonzero(np.isin(names, list(wanted)))
    missing = len(wanted) - len(found)
    if len(found) == 0:
        raise ValueError(f"None of the {len(wanted)} files of {path} is in {index.split_dir}; "
                         f"check --semisup.subset_file and config.data.path.")
    if missing:
        log(f"semisup: {missing} of the {len(wanted)} listed files are not in the index of "
            f"{index.split_dir} (unreadable or converted); training on {len(found)}.")
    return found


def split_labels(data_config, split: str) -> np.ndarray:
    """All labels of a split, without decoding images where the source allows it.

    An unlabeled folder split (labels -1) is refused in one sentence here,
    before the class-balanced subset is drawn from it.
    """
    if data_config.source == "folder":
        from barlow_jax.data import folder
        labels = folder.index_split(data_config, split).labels
    else:
        from barlow_jax import data as data_lib
        labels = np.asarray(data_lib.load_eval_arrays(data_config, split)[1], np.int32)
    feats_lib.require_labels(labels, split)
    return labels


def subset_stream(data_config, split, indices, *, batch_size, seed, epoch):
    """Train-mode batches of the rows ``indices`` of a split, in a (seed, epoch) order."""
    from barlow_jax import data as data_lib
    if data_config.source == "tfds":
        raise ValueError("Semi-supervised subsets of a TFDS split need images of at most "
                         f"{linear_lib.SMALL_IMAGE} pixels; use a folder source for larger ones.")
    return data_lib.eval_batches(data_config, split, batch_size=batch_size, mode="train",
                                 seed=seed, epoch=epoch, indices=indices,
                                 process_index=0, process_count=1)


class FineTuner:
    """Jitted fine-tuning step and evaluation of backbone + linear head (global jit)."""

    def __init__(self, config, semisup, mesh):
        from barlow_jax.data import augment_jax
        from barlow_jax.models import build_backbone
        if semisup.bn not in BN_MODES:
            raise ValueError(f"--semisup.bn={semisup.bn!r} is unknown; use 'train' or 'frozen'.")
        self.mesh = mesh
        self.batch_sharding = parallel.batch_sharding(mesh)
        self.replicated = parallel.replicated(mesh)
        backbone = build_backbone(config)
        crop = linear_lib.small_image_crop(semisup)
        data_config = config.data
        bn_train = semisup.bn == "train"
        momentum, wd = float(semisup.momentum), float(semisup.weight_decay)

        def forward(params, batch_stats, x, train):
            variables = {"params": params["backbone"], "batch_stats": batch_stats}
            if train:
                feats, upd = backbone.apply(variables, x, train=True, mutable=["batch_stats"])
                batch_stats = upd["batch_stats"]
            else:
                feats = backbone.apply(variables, x, train=False)
            logits = linear_lib.head_logits(params["head"], feats.astype(jnp.float32))
            return logits, batch_stats

        def step(params, batch_stats, buf, images, labels, mask, key_data, lrs):
            if images.dtype == jnp.uint8:
                key = jax.random.wrap_key_data(key_data)
                x = augment_jax.view(images, key, crop, data_config, size=images.shape[1])
            else:
                x = images.astype(jnp.float32)

            def loss_fn(p):
                logits, new_bs = forward(p, batch_stats, x, bn_train)
                return sgd.masked_cross_entropy(logits, labels, mask), new_bs

            (loss, new_bs), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            lr_tree = {"backbone": jax.tree.map(lambda _: lrs[0], params["backbone"]),
                       "head": jax.tree.map(lambda _: lrs[1], params["head"])}
            params, buf = sgd.sgd_update(params, buf, grads, lr_tree, momentum=momentum,
                                         weight_decay=wd)
            return params, new_bs, buf, loss

        def counts(params, batch_stats, images, labels, mask):
            if images.dtype == jnp.uint8:
                x = normalize.from_uint8(images, data_config)
            else:
                x = images.astype(jnp.float32)
            logits, _ = forward(params, batch_stats, x, False)
            return sgd.topk_correct(logits, labels, mask)

        self.step = jax.jit(step)
        self.counts = jax.jit(counts)

    def put(self, x, replicated=False):
        sharding = self.replicated if replicated else self.batch_sharding
        return jax.tree.map(lambda a: parallel.host_to_global(np.asarray(a), sharding), x)

    def evaluate(self, params, batch_stats, batches, batch_size: int):
        """(top1, top5) in percent over an iterable of {'image', 'label'} batches."""
        b_pad = sgd.padded_size(batch_size, self.mesh.devices.size)
        total, n = np.zeros(2), 0
        for batch in batches:
            for start in range(0, len(batch["label"]), b_pad):
                part = {k: v[start:start + b_pad] for k, v in batch.items()}
                part, mask = sgd.pad_batch(part, b_pad)
                total += np.asarray(self.counts(params, batch_stats, self.put(part["image"]),
                                                self.put(part["label"].astype(np.int32)),
                                                self.put(mask)))
                n += int(mask.sum())
        return tuple(float(100.0 * c / max(n, 1)) for c in total)


def _fill_batch(batch, b_pad, order_head):
    """Pads a streamed batch to b_pad rows with copies of ``order_head`` rows; mask 0 there."""
    n = len(batch["label"])
    mask = np.zeros(b_pad, np.float32)
    mask[:n] = 1.0
    if n == b_pad:
        return batch, mask
    take = np.resize(np.arange(len(order_head["label"])), b_pad - n)
    return {k: np.concatenate([batch[k], order_head[k][take]]) for k in batch}, mask


def run_semisup(workdir: str, semisup=None, fraction: float = 0.01, *, config=None,
                variables=None, pretrain_step: Optional[int] = None, mesh=None,
                log: Callable[[str], None] = print) -> Dict:
    """Fine-tunes (or resumes) backbone + linear layer on ``fraction`` of the labels.

    Epoch checkpoints go to ``workdir/semisup_<pct>pct/``, the results to
    ``workdir/semisup_eval.json`` under the key ``"<pct>%"`` (rewritten after
    every epoch; the other fractions' entries are kept).

    Args:
      workdir: the pretraining run's directory (local or gs://...).
      semisup: the fine-tuning settings; None uses ``get_default_semisup_config()``.
      fraction: the fraction of the train labels, e.g. 0.01 or 0.1.
      config: the pretraining config; None loads ``workdir/config.json`` (a
        given one, e.g. with CLI overrides, replaces the saved one).
      variables: the pretrained variables; None loads the checkpoint at
        ``semisup.step`` (latest when < 0) with ``checkpointing.load_variables``.
      pretrain_step: the step ``variables`` come from (recorded in the setup).
      mesh: the device mesh; None uses all devices.
      log: receives the progress lines.

    Returns:
      ``{'best', 'final', 'epochs', 'setup', 'complete', 'protocol'}``: best
      and final top-1 / top-5 in percent, one record per epoch, the settings,
      whether all epochs are done and the ``semisup`` settings used.
    """
    semisup = semisup if semisup is not None else get_default_semisup_config()
    config, variables, pretrain_step, mesh, train_split, test_split = sup.resolve_run(
        workdir, semisup, config, variables, pretrain_step, mesh)
    dc = config.data
    seed, bsz, epochs = int(semisup.seed), int(semisup.batch_size), int(semisup.epochs)
    pct = f"{100 * fraction:g}%"

    t0 = time.perf_counter()
    if semisup.subset_file:
        indices = subset_from_file(dc, train_split, semisup.subset_file, log)
        subset_kind = f"file {semisup.subset_file}"
    else:
        if dc.source == "folder" and int(dc.get("num_classes", 0) or 0) == 1000:
            raise ValueError("A 1000-class folder dataset (ImageNet) needs the standard subset: "
                             "pass --semisup.subset_file=/path/to/1percent.txt (SimCLR's list).")
        indices = balanced_subset(split_labels(dc, train_split), fraction, seed)
        subset_kind = f"class-balanced, seed {seed}"
    small = int(dc.image_size) <= linear_lib.SMALL_IMAGE
    if small:
        train = feats_lib.load_labelled(dc, train_split, indices=indices,
                                        batch_size=int(semisup.eval_batch_size))
        test = feats_lib.load_labelled(dc, test_split, max_examples=int(semisup.test_examples),
                                       seed=seed + 1, batch_size=int(semisup.eval_batch_size))
        labels_max = max(int(train.labels.max()), int(test.labels.max()))
        test_batches = lambda: [{"image": test.images, "label": test.labels}]
        n_test = len(test.labels)
    else:
        if int(semisup.test_examples) > 0:
            raise ValueError("--semisup.test_examples needs images of at most "
                             f"{linear_lib.SMALL_IMAGE} pixels; large test splits are streamed.")
        labels_max = int(dc.get("num_classes", 1)) - 1
        test_batches = lambda: feats_lib.eval_stream(dc, test_split,
                                                     batch_size=int(semisup.eval_batch_size))
        from barlow_jax import data as data_lib
        n_test = int(data_lib.num_examples(dc, test_split))
    num_classes = max(int(dc.get("num_classes", 0) or 0), labels_max + 1)
    log(f"semisup {pct}: {len(indices)} labelled train examples ({subset_kind}), {n_test} test "
        f"examples, {'device crop' if small else 'streamed'} input; "
        f"{time.perf_counter() - t0:.1f}s")

    lr_backbone = (float(semisup.lr_backbone) if float(semisup.lr_backbone) >= 0
                   else default_lr_backbone(fraction))
    tuner = FineTuner(config, semisup, mesh)
    bvars = feats_lib.backbone_variables(variables)
    from barlow_jax.models import build_backbone
    feat_dim = build_backbone(config).num_features
    head = linear_lib.init_head(jax.random.key(seed), feat_dim, num_classes,
                                float(semisup.init_std))
    params = {"backbone": bvars["params"], "head": head}
    state = tuner.put({"params": params, "batch_stats": bvars["batch_stats"],
                       "buf": jax.tree.map(np.zeros_like, params)}, replicated=True)
    setup = {"pretrain_step": None if pretrain_step is None else int(pretrain_step),
             "fraction": float(fraction), "num_train": int(len(indices)), "epochs": epochs,
             "batch_size": bsz, "lr_backbone": lr_backbone, "lr_head": float(semisup.lr_head),
             "weight_decay": float(semisup.weight_decay), "bn": str(semisup.bn), "seed": seed,
             "subset": subset_kind, "num_classes": num_classes}
    n_dev = mesh.devices.size
    b_pad = sgd.padded_size(bsz, n_dev)

    def train_epoch(epoch, state, stopped):
        lr_b = sgd.cosine_lr(lr_backbone, epoch, epochs)
        lr_h = sgd.cosine_lr(float(semisup.lr_head), epoch, epochs)
        lrs_dev = tuner.put(np.array([lr_b, lr_h], np.float32), replicated=True)
        params, batch_stats, buf = state["params"], state["batch_stats"], state["buf"]
        losses = []
        order = np.random.default_rng([seed, epoch]).permutation(len(indices))
        epoch_key = jax.random.fold_in(jax.random.key(seed + 1), epoch)
        if small:
            head_rows = {"image": train.images[order[:b_pad]],
                         "label": train.labels[order[:b_pad]]}
            batches = ({"image": train.images[order[i:i + bsz]],
                        "label": train.labels[order[i:i + bsz]]}
                       for i in range(0, len(order), bsz))
        else:
            batches = subset_stream(dc, train_split, indices, batch_size=bsz, seed=seed,
                                    epoch=epoch)
            head_rows = None
        for i, batch in enumerate(batches):
            if stopped():
                break
            if head_rows is None:
                head_rows = {k: np.asarray(v) for k, v in batch.items()}
            batch, mask = _fill_batch(batch, b_pad, head_rows)
            key = tuner.put(jax.random.key_data(jax.random.fold_in(epoch_key, i)),
                            replicated=True)
            params, batch_stats, buf, loss = tuner.step(
                params, batch_stats, buf, tuner.put(batch["image"]),
                tuner.put(batch["label"].astype(np.int32)), tuner.put(mask), key, lrs_dev)
            losses.append((loss, float(mask.sum())))
        return ({"params": params, "batch_stats": batch_stats, "buf": buf}, losses,
                {"lr_backbone": lr_b, "lr_head": lr_h})

    from barlow_jax import paths  # the workdir may be gs://... (etils.epath)
    path = paths.join(workdir, "semisup_eval.json")

    def write(results):
        """semisup_eval.json with this fraction's epochs so far (the other fractions kept)."""
        payload = {}
        if paths.exists(path):
            try:
                payload = json.loads(paths.read_text(path))
            except ValueError:
                payload = {}
        payload[pct] = dict(results, protocol=semisup.to_dict())
        epochs_lib.write_json(path, payload)

    results, _, _ = epochs_lib.run_epochs(
        f"semisup {pct}", epochs, state, setup, train_epoch=train_epoch,
        evaluate=lambda state: tuner.evaluate(state["params"], state["batch_stats"],
                                              test_batches(), int(semisup.eval_batch_size)),
        directory=paths.join(workdir, f"semisup_{100 * fraction:g}pct"),
        stop_after=int(semisup.stop_after_epochs), write=write, log=log)
    result = dict(results, protocol=semisup.to_dict())
    if result["complete"]:
        log(f"semisup {pct} done: final top1 {result['final']['top1']:.2f} top5 "
            f"{result['final']['top5']:.2f}; {path}")
    return result


def _extra_flags():
    from absl import flags
    flags.DEFINE_float("fraction", None, "Fraction of the labels: 0.01 or 0.1.")
    flags.mark_flag_as_required("fraction")


if __name__ == "__main__":
    sup.cli("semisup", get_default_semisup_config(),
            lambda workdir, config, flags, semisup: run_semisup(
                workdir, semisup, flags.fraction, config=config),
            extra_flags=_extra_flags)
