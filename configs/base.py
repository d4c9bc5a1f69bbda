"""The declared defaults every experiment config overrides (kept for ``from configs import base``).

They live in the package, ``barlow_jax/defaults.py``, so the library never
imports this folder; docs/config.md lists every key with its meaning.
"""

from barlow_jax.defaults import augment_view, get_config  # noqa: F401
