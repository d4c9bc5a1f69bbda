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

import contextlib
import os
import sys
import tempfile

_configured = False
# C++ start-up notices that TensorFlow >= 2.21 prints through absl logging whatever
# TF_CPP_MIN_LOG_LEVEL says; hidden while TensorFlow is imported, other lines pass.
_NOTICES = ("oneDNN custom operations are on", "cpu_feature_guard",
            "All log messages before absl::InitializeLog() is called")


@contextlib.contextmanager
def _start_up_notices_hidden():
    """Sends file descriptor 2 to a temporary file during the import, then writes back
    every line except the known start-up notices (errors and warnings stay visible)."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode("utf-8", "replace").splitlines(True)
                    if not any(n in line for n in _NOTICES)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def import_tensorflow():
    """The ``tensorflow`` module, configured as the module docstring says."""
    global _configured
    # Importing JAX sets the level to 1 (a setdefault) when it was unset; INFO notices are
    # hidden at 1, warnings and errors (cuDNN/cuBLAS factory registrations on GPU machines)
    # at 2. An explicit 0 (show everything) is left alone.
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "") in ("", "1"):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    try:
        with _start_up_notices_hidden():
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
