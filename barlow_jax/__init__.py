"""barlow_jax: Barlow Twins and friends for self-supervised learning in JAX/Flax."""

__version__ = "0.1.0"
