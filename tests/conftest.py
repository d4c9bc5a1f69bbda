"""Test set-up and the fixtures shared by the test files.

Environment (before JAX is imported anywhere): 8 fake CPU devices, quiet
TensorFlow, XLA's optimisation passes off (see below), and JAX's persistent
compilation cache in the same folder the CLI
subprocesses use (tests/cli_helpers.cli_env), so a program compiled by one test
(or one process) is read back instead of compiled again by the next. The cache
changes no result: it stores the executable XLA would build again.

Fixtures: ``mesh_of`` (a 1-D ``data`` mesh over the first n devices),
``smoke_config`` (a fresh configs/smoke.py config), ``shared_data`` and
``cifar_archive`` (the shared real data, ``BARLOW_JAX_DATA`` overrides),
``repo_root``.
"""

import os
import tempfile

import pytest

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "barlow_jax_test_jit_cache"))
# Only programs worth keeping (the steps, the evaluators), not every eager op.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# XLA's CPU optimisation passes dominate the suite's time (tiny models, few steps) and no
# test asserts on them: the suite checks values, gradients, statistics and behaviour, which
# the unoptimised program computes too. The CLI subprocesses inherit this. The few tests
# that run the program users get (tests/cli_helpers.OPTIMIZED: the Barlow Twins CLI
# SIGTERM/resume runs, the README main job, the benchmark) turn the passes back on.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")

# The repository root is importable through pyproject.toml's `pythonpath` (pytest's own
# setting), so `tests.*` helpers and `configs.*` resolve without editing sys.path here.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHARED_DATA = os.environ.get("BARLOW_JAX_DATA", os.path.join(ROOT, "..", "shared", "data"))


@pytest.fixture(scope="session")
def repo_root() -> str:
    """The repository root (CLI subprocesses run there)."""
    return ROOT


@pytest.fixture(scope="session")
def shared_data() -> str:
    """../shared/data, or $BARLOW_JAX_DATA."""
    return SHARED_DATA


@pytest.fixture(scope="session")
def cifar_archive(shared_data) -> str:
    """The real CIFAR-10 JPEG archive; the test is skipped, saying why, where it is absent."""
    path = os.path.join(shared_data, "cifar10-jpeg.tar.gz")
    if not os.path.exists(path):
        pytest.skip(f"{path} not found (set BARLOW_JAX_DATA to the folder holding it)")
    return path


@pytest.fixture(scope="session")
def mesh_of():
    """``mesh_of(n)``: the 1-D ``data`` mesh over the first n devices (built once per n)."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from barlow_jax import parallel

    meshes = {}

    def make(n: int) -> Mesh:
        assert n <= jax.device_count(), f"{n} devices asked for, {jax.device_count()} present"
        if n not in meshes:
            meshes[n] = Mesh(np.array(jax.devices()[:n]), (parallel.AXIS,))
        return meshes[n]

    return make


@pytest.fixture
def smoke_config():
    """A fresh configs/smoke.py config (a tiny model on synthetic data), free to modify."""
    from configs import smoke
    return smoke.get_config()


@pytest.fixture
def optimized():
    """XLA's optimisation passes on for this test (the suite runs without them, see above):
    for tests that read the compiled program itself (collective bytes, memory)."""
    import jax
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture
def full_disk_at(monkeypatch):
    """``full_disk_at(step)``: orbax's save of ``step`` leaves a half-written folder and
    raises ENOSPC, as a disk that fills during that save; other steps save normally."""
    import errno

    from barlow_jax import checkpointing

    real = checkpointing.ocp.CheckpointManager.save

    def patch(full_step: int):
        def save(self, step, *a, **k):
            if step == full_step:
                os.makedirs(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp-1234"))
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, step, *a, **k)

        monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", save)

    return patch
