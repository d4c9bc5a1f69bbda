"""Builds the training pipeline named by ``config.data`` (contract: package docstring).

Placements (``config.data.placement``):

* ``host``: tf.data on the CPU does everything; a batch is
  ``{'view1', 'view2'}`` float32 normalised [B, S, S, 3] plus ``'label'``.
* ``split``: tf.data decodes, crops and flips (uint8 ``{'view1', 'view2'}``);
  ``make_views`` does colour, grayscale, blur, solarize and normalisation in
  JAX with per-example randomness from the step's key.
* ``device``: the uint8 dataset lives on every device (a replica each);
  a batch is ``{'idx'}`` (global example indices) and ``make_views``
  does every op, the crop included.
* ``auto``: ``device`` when JAX's default backend is not the CPU, else ``host``.

Order (placements ``host`` and ``split`` on indexed sources). Epoch e visits
``permutation(seed, e)`` of the N examples; step k = e * steps_per_epoch + j
takes positions [j*B, (j+1)*B) of it (the last N mod B are dropped), and
process p of P builds rows [p*B/P, (p+1)*B/P) of that global batch, the rows
its devices hold. Example i's augmentation is seeded by (seed, e, i). A
pipeline started at step k therefore yields exactly what an uninterrupted one
yields at step k, decodes nothing it skips, and the global batch does not
depend on the number of processes. TFDS streams instead: each process reads
only its slice of the split (``tfds.even_splits``, P slices) through a
shuffle buffer seeded by (seed, e), and a resume skips (without decoding)
the examples already used in the epoch. So a TFDS run is deterministic and
resumable for a given process count, but its batches depend on P.

Placement ``device``: every device holds the whole uint8 dataset and step k
takes the same global positions of ``permutation(seed, e)`` as above; device d
gathers its rows. View randomness (placements ``split`` and ``device``) is
per example: ``augment_jax.example_keys(step_key, example index, view)``,
with the step key a function of (seed, k). So for every placement the global
batch of step k and each example's views depend on (config, seed, k) only,
not on the number of devices or processes, and a resume on another device
count continues the same run (tests/test_placement_independence.py).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Dict, Optional

import jax
import numpy as np

from barlow_jax import parallel
from barlow_jax.data import augment_jax, normalize
from barlow_jax.data.sources import (IndexedSource, open_source, tfds_dataset,
                                     tfds_process_split, tfds_slice_start)

PLACEMENTS = ("host", "split", "device", "auto")
log = logging.getLogger(__name__)


def resolve_placement(placement: str) -> str:
    if placement not in PLACEMENTS:
        raise ValueError(f"config.data.placement={placement!r} is unknown; use one of "
                         f"{', '.join(PLACEMENTS)}.")
    if placement == "auto":
        return "device" if jax.default_backend() != "cpu" else "host"
    return placement


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed for epoch ``epoch``'s augmentation (and TFDS shuffle)."""
    return int(np.random.SeedSequence([seed, epoch, 7]).generate_state(1)[0])


def local_epoch_indices(n: int, global_batch: int, seed: int, epoch: int, first_step: int,
                        rows: tuple) -> np.ndarray:
    """Example indices this process reads in ``epoch`` from step ``first_step`` on, in order."""
    steps = n // global_batch
    order = epoch_permutation(seed, epoch, n)[:steps * global_batch]
    return order.reshape(steps, global_batch)[first_step:, rows[0]:rows[1]].reshape(-1)


def process_rows(mesh, global_batch: int, process_index=None, process_count=None) -> tuple:
    """[start, stop) of the global batch rows held by this process's devices."""
    if process_count is not None:
        per = global_batch // process_count
        return process_index * per, (process_index + 1) * per
    return parallel.process_rows(mesh, global_batch)


def _too_small(n: int, global_batch: int, what: str):
    return ValueError(f"The training split has {n} usable {what}, fewer than one global batch "
                      f"of {global_batch}; lower config.batch_size or use more data.")


class _Pipeline:
    num_examples: int
    steps_per_epoch: int
    device_data: Any = None
    skipped: int = 0

    def __iter__(self):
        return self

    def stats(self) -> Dict[str, Any]:
        return {"skipped_images": int(self.skipped)}

    def close(self):
        pass


# ----------------------------------------------------------------- host / split

class HostPipeline(_Pipeline):
    """tf.data pipeline for placements 'host' and 'split' (see module docstring)."""

    def __init__(self, data_config, placement: str, *, global_batch_size: int, seed: int,
                 mesh, start_step: int = 0, process_index=None, process_count=None):
        from barlow_jax.data.tensorflow_env import import_tensorflow
        tf = import_tensorflow()
        from barlow_jax.data import augment_tf
        self._tf, self._atf = tf, augment_tf
        self.data_config = data_config
        self.placement = placement
        self.sharding = parallel.batch_sharding(mesh)
        pc = jax.process_count() if process_count is None else process_count
        pi = jax.process_index() if process_count is None else process_index
        parallel.check_batch_size(global_batch_size, mesh)
        if global_batch_size % pc:  # a simulated process count (tests)
            raise ValueError(f"config.batch_size={global_batch_size} does not divide evenly "
                             f"over {pc} processes; set it to a multiple of {pc}.")
        rows = process_rows(mesh, global_batch_size, process_index, process_count)
        local_batch = rows[1] - rows[0]
        source = open_source(data_config, data_config.split)
        self.skipped = source.skipped
        if isinstance(source, IndexedSource):
            n = source.num_examples
            self.steps_per_epoch = n // global_batch_size
            if self.steps_per_epoch == 0:
                raise _too_small(n, global_batch_size, "images")
            examples = self._indexed(source, seed, global_batch_size, rows, start_step)
        else:
            per_process = source.num_examples // pc
            self.steps_per_epoch = per_process // local_batch
            if self.steps_per_epoch == 0:
                raise _too_small(source.num_examples, global_batch_size, "examples")
            examples = self._streamed(seed, pi, pc, local_batch, start_step,
                                     source.num_examples)
        self.num_examples = self.steps_per_epoch * global_batch_size
        ds = examples.map(self._crops, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(local_batch, drop_remainder=True)
        if placement == "host":
            ds = ds.map(self._colour, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.prefetch(2)
        options = tf.data.Options()
        options.deterministic = True
        if data_config.get("threads", 0) > 0:
            options.threading.private_threadpool_size = data_config.threads
        self._dataset = ds.with_options(options)
        self._iterator = self._dataset.as_numpy_iterator()

    def _decoded(self, ds):
        """Maps (s, i, encoded, label) to (s, i, image, label).

        Files that passed the PIL check at indexing but that TF cannot decode
        are dropped with TF's warning instead of stopping training (errors of
        the augmentation itself are not caught: they come later).
        """
        tf = self._tf
        ds = ds.map(lambda s, i, enc, label: (s, i, self._atf.decode(enc), label),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.ignore_errors(log_warning=True)

    def _indexed(self, source, seed, global_batch, rows, start_step):
        """(epoch_seed, example index, image, label) in this process's order."""
        tf = self._tf
        n = source.num_examples
        start_epoch, first = divmod(start_step, self.steps_per_epoch)

        def epochs():
            for epoch in itertools.count(start_epoch):
                yield epoch_seed(seed, epoch), local_epoch_indices(
                    n, global_batch, seed, epoch, first if epoch == start_epoch else 0, rows)

        spec = (tf.TensorSpec((), tf.int64), tf.TensorSpec((None,), tf.int64))
        ds = tf.data.Dataset.from_generator(epochs, output_signature=spec)
        ds = ds.flat_map(lambda s, idx: tf.data.Dataset.from_tensor_slices(
            (tf.fill(tf.shape(idx), s), idx)))
        labels = tf.constant(source.labels)
        if source.paths is None:
            images = tf.constant(source.images)
            return ds.map(lambda s, i: (s, i, tf.gather(images, i), tf.gather(labels, i)))
        paths = tf.constant(source.paths.astype(str))
        return self._decoded(ds.map(lambda s, i: (
            s, i, tf.io.read_file(tf.gather(paths, i)), tf.gather(labels, i))))

    def _streamed(self, seed, pi, pc, local_batch, start_step, n):
        """TFDS: this process's slice through a per-epoch seeded shuffle buffer.

        The process reads only its slice (``tfds.even_splits``); each example
        keeps its index in the whole split (slice start + position).
        """
        tf, dc = self._tf, self.data_config
        offset = tfds_slice_start(n, pi, pc)
        base = tfds_dataset(dc, tfds_process_split(dc.split, pi, pc), decode=False)
        base = base.enumerate().map(lambda j, ex: (j + offset, ex))
        per_epoch = self.steps_per_epoch * local_batch
        start_epoch, first = divmod(start_step, self.steps_per_epoch)

        def epochs():
            for epoch in itertools.count(start_epoch):
                yield epoch_seed(seed, epoch), (first if epoch == start_epoch else 0) * local_batch

        spec = (tf.TensorSpec((), tf.int64), tf.TensorSpec((), tf.int64))

        def one_epoch(s, skip):
            ds = base.shuffle(dc.shuffle_buffer, seed=s).take(per_epoch).skip(skip)
            return ds.map(lambda i, ex: (s, i, ex[0], ex[1]))

        epochs_ds = tf.data.Dataset.from_generator(epochs, output_signature=spec)
        return self._decoded(epochs_ds.flat_map(one_epoch))

    def _crops(self, s, i, image, label):
        """Per example, seeded by (epoch seed, example index): both views' crop + flip
        ('split': uint8; 'host': float in [0, 1] plus the colour parameters)."""
        tf, size, aug = self._tf, self.data_config.image_size, self.data_config.augment
        seeds = tf.random.experimental.stateless_split(tf.stack([s, i]), 2)
        out = {"label": label}
        if self.placement == "split":   # the colour ops' per-example keys (make_views)
            out["index"] = tf.cast(i, tf.int32)
        for k, (seed, cfg) in enumerate(((seeds[0], aug.view1), (seeds[1], aug.view2)), 1):
            if self.placement == "split":
                out[f"view{k}"] = self._atf.crop_and_flip_uint8(image, seed, cfg, size)
            else:
                out[f"view{k}"], out[f"params{k}"] = self._atf.crop_stage(image, seed, cfg, size)
        return out

    def _colour(self, batch):
        """Per batch ('host'): colour ops with each example's parameters, normalisation."""
        dc, aug = self.data_config, self.data_config.augment
        out = {"label": batch["label"]}
        for k, cfg in ((1, aug.view1), (2, aug.view2)):
            x = self._atf.color_batch(batch[f"view{k}"], batch[f"params{k}"], cfg)
            out[f"view{k}"] = normalize.normalize(x, dc)
        return out

    def local_batches(self):
        """This process's part of each global batch, as NumPy dicts."""
        return self._iterator

    def __next__(self):
        local = next(self._iterator)
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self.sharding, x), local)

    def make_views(self, batch, device_data, key):
        if self.placement == "host":
            return batch["view1"], batch["view2"]
        aug = self.data_config.augment
        return tuple(augment_jax.view(batch[f"view{k}"], None, cfg, self.data_config, crop=False,
                                      keys=augment_jax.example_keys(key, batch["index"], k))
                     for k, cfg in ((1, aug.view1), (2, aug.view2)))

    def close(self):
        self._iterator = None


# ----------------------------------------------------------------- device

class DevicePipeline(_Pipeline):
    """The whole uint8 dataset on every device; every step is a gather.

    ``device_data['images']`` has shape [D, N, H, W, 3] sharded ``P('data')``:
    device d's block is the whole dataset (a replica, not a copy on the host:
    each process fills only its own devices with ``make_array_from_callback``),
    so under ``shard_map`` each device sees [1, N, ...] and gathers any row.
    Step k = e * steps_per_epoch + j takes positions [j*B, (j+1)*B) of
    ``permutation(seed, e)`` of the N examples (the global batch, a function
    of (seed, k) only); device d gathers its rows of it. The views' keys come
    from (step key, example index): nothing depends on D or the processes.
    The index arrays of an epoch are placed on the devices once, at its first
    step (one transfer per epoch; none per step).
    """

    placement = "device"

    def __init__(self, source: IndexedSource, data_config, *, global_batch_size: int,
                 seed: int, mesh, start_step: int = 0):
        parallel.check_batch_size(global_batch_size, mesh)
        n_dev = mesh.devices.size
        images, labels = source.images, np.asarray(source.labels)
        self.skipped = source.skipped
        self.data_config = data_config
        self.sharding = parallel.batch_sharding(mesh)
        self.n = len(images)
        self.steps_per_epoch = self.n // global_batch_size
        if self.steps_per_epoch == 0:
            raise _too_small(self.n, global_batch_size, "images")
        self.num_examples = self.steps_per_epoch * global_batch_size
        self.global_batch = global_batch_size
        self.seed, self.step = seed, start_step
        log.info("placement 'device': %.1f MiB of uint8 images on each of %d devices",
                 images.nbytes / 2 ** 20, n_dev)
        self.device_data = {
            "images": jax.make_array_from_callback(
                (n_dev, *images.shape), self.sharding, lambda ix: images[None]),
            "labels": jax.make_array_from_callback(
                (n_dev, self.n), self.sharding, lambda ix: labels[None]),
        }
        self._epoch, self._epoch_batches = None, []

    def indices(self, step: int) -> np.ndarray:
        """The global idx array of ``step`` (example indices of its batch, in order)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        b = self.global_batch
        return epoch_permutation(self.seed, epoch, self.n)[pos * b:(pos + 1) * b].astype(np.int32)

    def _load_epoch(self, epoch: int, first: int):
        b = self.global_batch
        order = epoch_permutation(self.seed, epoch, self.n).astype(np.int32)
        rows = [order[pos * b:(pos + 1) * b] for pos in range(first, self.steps_per_epoch)]
        self._epoch_batches = [
            jax.make_array_from_callback((b,), self.sharding, lambda ix, r=r: r[ix])
            for r in rows]
        self._epoch_batches.reverse()   # pop() from the end
        self._epoch = epoch

    def __next__(self):
        epoch, pos = divmod(self.step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._load_epoch(epoch, pos)
        self.step += 1
        return {"idx": self._epoch_batches.pop()}

    def make_views(self, batch, device_data, key):
        images = device_data["images"][0][batch["idx"]]
        return augment_jax.two_views(images, key, self.data_config, crop=True, ids=batch["idx"])


def create_pipeline(data_config, *, global_batch_size: int, seed: int, mesh,
                    start_step: int = 0, process_index: Optional[int] = None,
                    process_count: Optional[int] = None):
    """The pipeline for ``config.data`` (see the package docstring).

    Args:
        data_config: ``config.data``: source, path, split, placement, image
            size and the augmentation settings.
        global_batch_size: image pairs per step over all processes; divisible
            by the device count.
        seed: the run's seed (>= 0); with the step it fixes the example order
            and every augmentation.
        mesh: the device mesh (``parallel.make_mesh``) the batches are sharded over.
        start_step: the first step to produce (a resumed run's step): the
            pipeline yields what an uninterrupted one yields from there on.
        process_index: this process's index, to simulate a multi-process run
            (tests); JAX's when None. Honoured by the host placements only.
        process_count: the number of processes to simulate; JAX's when None.

    Returns:
        An iterator of global batches with ``make_views(batch, device_data, key)``,
        ``device_data``, ``num_examples``, ``steps_per_epoch``, ``stats()`` and
        ``close()``: a ``DevicePipeline`` for placement 'device' (or 'auto'
        on an accelerator), else a ``HostPipeline``.

    Raises:
        ValueError: an unknown placement, a negative seed, a batch that does
            not split over the devices, or a split smaller than one global batch.
    """
    placement = resolve_placement(data_config.placement)
    if seed < 0:
        raise ValueError(f"config.seed={seed} must be >= 0.")
    if placement == "device":
        source = open_source(data_config, data_config.split, in_memory=True)
        return DevicePipeline(source, data_config, global_batch_size=global_batch_size,
                              seed=seed, mesh=mesh, start_step=start_step)
    return HostPipeline(data_config, placement, global_batch_size=global_batch_size, seed=seed,
                        mesh=mesh, start_step=start_step, process_index=process_index,
                        process_count=process_count)
