"""Every sharding decision in one place: the 1-D data mesh, placements, batch reductions.

All processes' devices form one axis named ``data``. Parameters, batch
statistics and optimizer state are replicated (``P()``); batches and the
device-resident dataset are split along their leading axis (``P('data')``).

Losses and metrics reduce over that axis with the helpers below, which take
``axis_name`` (the mapped axis inside ``jax.shard_map``, or None for one
array on one device, where they are the identity):

* ``global_sum(x, axis_name)``: the sum over devices (``psum``);
* ``global_mean(x, axis_name)``: the mean over devices (``pmean``), the
  global-batch mean of per-device means of equal-sized local batches;
* ``batch_mean(x, axis_name)``: the mean over the GLOBAL batch of the rows
  of ``x`` (leading axis), i.e. ``global_mean(mean(x, axis=0))``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


def global_sum(x, axis_name: Optional[str]):
    """Sum over the devices of ``axis_name`` (a pytree works); identity without one."""
    return lax.psum(x, axis_name) if axis_name is not None else x


def global_mean(x, axis_name: Optional[str]):
    """Mean over the devices of ``axis_name`` (a pytree works); identity without one."""
    return lax.pmean(x, axis_name) if axis_name is not None else x


def batch_mean(x, axis_name: Optional[str]):
    """Mean of ``x``'s rows (leading axis) over the global batch (equal local batches)."""
    return global_mean(jnp.mean(x, axis=0), axis_name)


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
    """Per-device batch; one clear sentence when the batch does not split evenly.

    The batch must split over the devices and over the processes (each process
    feeds its own devices' rows), so the multiple asked for is their least
    common multiple.
    """
    n = int(np.lcm(mesh.devices.size, jax.process_count()))
    if global_batch <= 0 or global_batch % n:
        lower = (global_batch // n) * n
        hint = f"{lower} or {lower + n}" if lower > 0 else f"{n}"
        over = (f"{mesh.devices.size} devices" if n == mesh.devices.size else
                f"{mesh.devices.size} devices and {jax.process_count()} processes")
        raise ValueError(f"{what}={global_batch} does not divide evenly over {over}; "
                         f"set it to a multiple of {n}, e.g. {hint}.")
    return global_batch // mesh.devices.size


def host_to_global(x, sharding: NamedSharding) -> jax.Array:
    """A global jax.Array from a host array that every process holds in full.

    Each device takes its own slice (``sharding`` decides which), so this works
    for replicated and batch-sharded placements and across processes.
    """
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def replicate(tree, mesh: Mesh):
    """Places a host pytree on every device of the mesh (works across processes)."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: host_to_global(x, sharding), tree)


def process_rows(mesh: Mesh, global_batch: int) -> tuple:
    """[start, stop) of the global batch rows held by this process's devices."""
    spans = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
    starts = sorted((s[0].start or 0, s[0].stop or global_batch) for s in spans.values())
    if any(a[1] != b[0] for a, b in zip(starts, starts[1:])):
        raise ValueError("This process's devices do not hold one contiguous block of the "
                         "batch; build the mesh from jax.devices() in their default order.")
    return starts[0][0], starts[-1][1]
