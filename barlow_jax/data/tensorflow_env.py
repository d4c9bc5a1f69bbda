"""TensorFlow for tf.data only: imported lazily, quietly, and kept off the accelerators.

Every ``import tensorflow`` of the package goes through ``import_tensorflow()``:

* ``TF_CPP_MIN_LOG_LEVEL`` is raised to 2 before the import (unless set to 0), so
  TensorFlow's C++ start-up notices (oneDNN, CPU features, plugin registrations) are
  not printed;
* ``tf.config.set_visible_devices([], 'GPU')``: TensorFlow must not claim GPU
  memory or initialise CUDA next to JAX (the Flax ImageNet example and big_vision
  do the same); tf.data runs on the host CPU anyway.

TensorFlow is not a core dependency (the ``data`` extra): machines without it
train with the device placement and the arrays/synthetic/folder sources.
"""

from __future__ import annotations

import os

_configured = False


def import_tensorflow():
    """The ``tensorflow`` module, configured as the module docstring says."""
    global _configured
    # Importing JAX sets the level to 1 (a setdefault) when it was unset; INFO notices are
    # hidden at 1, warnings and errors (cuDNN/cuBLAS factory registrations on GPU machines)
    # at 2. An explicit 0 (show everything) is left alone.
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "") in ("", "1"):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError(
            f"TensorFlow is needed for tf.data (config.data.placement 'host' or 'split', or "
            f"the tfds source) but cannot be imported ({e}); install it with "
            f"pip install -e \".[data]\", or use config.data.placement='device' with the "
            f"folder, arrays or synthetic source.") from e
    if not _configured:
        try:
            tf.config.set_visible_devices([], "GPU")
        except (RuntimeError, ValueError):
            pass  # devices already initialised by other code: too late to hide them
        _configured = True
    return tf
