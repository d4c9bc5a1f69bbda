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
  The batch for step k depends only on (seed, k): a resumed run sees exactly
  what an uninterrupted one sees.
* ``make_views(batch, device_data, key) -> (view1, view2)``: pure JAX, called
  inside the jitted step *per device* (under ``shard_map``, on the local
  shards) with a per-device key; returns float32 NHWC normalised views.
* ``stats() -> dict``: counters for metrics.jsonl (e.g. ``skipped_images``).
* ``close()``.

TensorFlow is imported lazily, only by the sources and placements that need
tf.data: the synthetic and device-resident paths run without it.
"""

from barlow_jax.data.pipeline import create_pipeline, load_eval_arrays

__all__ = ["create_pipeline", "load_eval_arrays"]
