"""Every sharding decision in one place: the 1-D data mesh and placements.

All processes' devices form one axis named ``data``. Parameters, batch
statistics and optimizer state are replicated (``P()``); batches and the
device-resident dataset are split along their leading axis (``P('data')``).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    """1-D mesh over all devices of all processes (Auto axis type, FIELD_NOTES §7)."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    kwargs = {}
    axis_type = getattr(jax.sharding, "AxisType", None)
    if axis_type is not None:
        kwargs["axis_types"] = (axis_type.Auto,)
    return Mesh(devices.reshape(-1), (AXIS,), **kwargs)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh, what: str = "config.batch_size") -> int:
    """Per-device batch; one clear sentence when the batch does not split evenly."""
    n = mesh.devices.size
    if global_batch <= 0 or global_batch % n:
        lower = (global_batch // n) * n
        hint = f"{lower} or {lower + n}" if lower > 0 else f"{n}"
        raise ValueError(f"{what}={global_batch} does not divide evenly over {n} devices; "
                         f"set it to a multiple of {n}, e.g. {hint}.")
    return global_batch // n


def replicate(tree, mesh: Mesh):
    """Places a host pytree on every device of the mesh (works across processes)."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_callback(
        np.shape(x), sharding, lambda idx: np.asarray(x)[idx]), tree)
