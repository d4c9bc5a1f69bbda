"""Every method's loss over embeddings, in one namespace.

Each takes an ``axis_name`` so that under ``jax.shard_map`` its batch
statistics cover the global batch; see each method's module for the formula.
"""

from barlow_jax.methods.barlow_twins import barlow_twins, batch_normalize, cross_correlation

__all__ = ["barlow_twins", "batch_normalize", "cross_correlation"]
