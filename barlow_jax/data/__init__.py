"""Input pipelines: sources, two-view augmentation, placement on the mesh.

The contract every pipeline keeps (the trainer relies on nothing else):

``create_pipeline(data_config, *, global_batch_size, seed, mesh, start_step=0)``
returns an object with

* ``num_examples`` / ``steps_per_epoch``: size of one epoch of the training
  split (``steps_per_epoch = num_examples // global_batch_size``, the
  remainder is dropped every epoch).
* ``device_data``: a pytree of global ``jax.Array``s sharded
  ``P('data')`` on axis 0 (the device-resident dataset), or ``None``. The
  trainer passes it to the step as an argument, never as a constant.
* iteration: yields one global batch per step starting at ``start_step``; a
  batch is a pytree of global ``jax.Array``s sharded ``P('data')`` on axis 0.
  The batch for step k depends only on (seed, k), not on the number of
  devices or processes (TFDS: not on the devices): a resumed run, on any
  device count, sees exactly what an uninterrupted one sees.
* ``make_views(batch, device_data, key) -> (view1, view2)``: pure JAX, called
  inside the jitted step *per device* (under ``shard_map``, on the local
  shards) with the step's key (the same on every device); each example's
  randomness comes from that key and the example's global index, so the
  views do not depend on the device count. Returns float32 NHWC views.
* ``stats() -> dict``: counters for metrics.jsonl (e.g. ``skipped_images``).
* ``close()``.

Evaluation helpers (TF-free except for the TFDS source):
``eval_batches(data_config, split, *, batch_size, mode='test', seed=0, epoch=0)``
yields ``{'image': float32 NHWC normalised, 'label': int32}`` NumPy batches
covering this process's share of the split once; ``num_examples(data_config,
split)``; ``load_eval_arrays(data_config, split)`` -> (uint8 images, int32
labels) for small datasets.

TensorFlow is imported lazily, only by the sources and placements that need
tf.data: the synthetic and device-resident paths run without it. See
docs/data.md for sources, placements, caching and measured throughput.
"""

from barlow_jax.data.evaluation import eval_batches, load_eval_arrays
from barlow_jax.data.pipeline import create_pipeline
from barlow_jax.data.sources import num_examples

__all__ = ["create_pipeline", "eval_batches", "load_eval_arrays", "num_examples"]
