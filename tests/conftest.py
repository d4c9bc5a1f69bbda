"""Test set-up: 8 fake CPU devices, set before JAX is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The repository root is importable through pyproject.toml's `pythonpath` (pytest's own
# setting), so `tests.*` helpers and `configs.*` resolve without editing sys.path here.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHARED_DATA = os.environ.get("BARLOW_JAX_DATA", os.path.join(ROOT, "..", "shared", "data"))
