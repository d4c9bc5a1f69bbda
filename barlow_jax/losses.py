"""Every method's loss over embeddings, in one namespace.

Each takes an ``axis_name`` so that under ``jax.shard_map`` its batch
statistics cover the global batch; see each method's module for the formula.
"""

from barlow_jax.methods.barlow_twins import barlow_twins, batch_normalize, cross_correlation
from barlow_jax.methods.byol import byol, byol_loss
from barlow_jax.methods.simclr import info_nce, l2_normalize
from barlow_jax.methods.simsiam import negative_cosine, simsiam
from barlow_jax.methods.vicreg import vicreg

__all__ = ["barlow_twins", "batch_normalize", "cross_correlation", "byol", "byol_loss",
           "info_nce", "l2_normalize", "negative_cosine", "simsiam", "vicreg"]
