"""Collective bytes read from HLO (barlow_jax/collectives.py), and what the step communicates.

* The parser on a program whose collectives have known sizes, compiled and
  as lowered, including one inside a ``lax.cond`` branch.
* The training step as JAX emits it (lowered HLO, before any backend pass,
  8 fake devices, bfloat16 compute): every weight gradient is all-reduced
  exactly once and in float32 (the old per-use reduction does it twice in
  bfloat16: the check can fail); Barlow Twins forms C from an all-gather
  of the embeddings, not from an all-reduce of the D x D matrix.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from barlow_jax import collectives, parallel
from barlow_jax.methods import get_method
from barlow_jax.steps import build_train_step
from barlow_jax.train import init_state
from configs import smoke

# These tests read the compiled program (collective bytes, memory): XLA's passes on.
pytestmark = pytest.mark.usefixtures("optimized")


def _known_program(flag):
    def f(x, w, flag):
        a = lax.psum(x @ w, "data")                                               # f32[4,4]
        b = lax.all_gather(x, "data", tiled=True)                                 # f32[32,16]
        c = lax.psum_scatter(x.astype(jnp.bfloat16), "data", scatter_dimension=1,
                             tiled=True)                                          # bf16[4,16] in
        d = lax.all_to_all(x, "data", 1, 0, tiled=True)                           # f32[4,16]
        e = lax.ppermute(x, "data", [(i, (i + 1) % 8) for i in range(8)])         # f32[4,16]
        h = lax.cond(flag, lambda: lax.psum(x.T @ x, "data").sum(),               # f32[16,16]
                     lambda: jnp.float32(0))
        total = a.sum() + b.sum() + c.astype(jnp.float32).sum() + d.sum() + e.sum()
        return lax.psum(total, "data") + h                                        # f32[]
    mesh = parallel.make_mesh(jax.devices()[:8])
    g = jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(P("data"), P(), P()), out_specs=P()))
    return g.lower(jnp.ones((32, 16)), jnp.ones((16, 4)), flag)


@pytest.mark.parametrize("form", ["compiled", "lowered"])
def test_known_sizes(form):
    lowered = _known_program(True)
    text = lowered.compile().as_text() if form == "compiled" else lowered.as_text(dialect="hlo")
    s = collectives.collective_bytes(text, 8)
    every, cond = s["every_step"], s["conditional"]
    assert every["all-reduce"]["bytes"] == 4 * 4 * 4 + 4
    assert every["all-reduce"]["count"] == 2
    assert every["all-gather"]["bytes"] == 32 * 16 * 4
    # the CPU backend promotes a bf16 reduce-scatter to f32; as emitted it is bf16
    rs_dtype_bytes = 4 if form == "compiled" else 2
    assert every["reduce-scatter"]["bytes"] == 4 * 16 * rs_dtype_bytes
    assert every["all-to-all"]["bytes"] == 4 * 16 * 4
    assert every["collective-permute"]["bytes"] == 4 * 16 * 4
    assert cond["all-reduce"]["bytes"] == 16 * 16 * 4 and cond["all-reduce"]["count"] == 1
    # ring traffic: all-reduce 2 (g-1)/g, gather/scatter/all-to-all (g-1)/g, permute 1
    assert every["all-reduce"]["wire_bytes"] == pytest.approx(2 * 7 / 8 * 68)
    assert every["all-gather"]["wire_bytes"] == pytest.approx(7 / 8 * 2048)
    assert every["collective-permute"]["wire_bytes"] == 256
    assert every["total"]["bytes"] == sum(every[k]["bytes"] for k in collectives.KINDS)
    text_lines = collectives.format_summary(s)
    assert any("logged steps only" in line for line in text_lines)


def test_group_size_from_iota_replica_groups():
    line = ("%ar = f32[8,2]{1,0} all-reduce(%x), channel_id=1, replica_groups=[2,4]<=[8], "
            "use_global_device_ids=true, to_apply=%add")
    (op,) = collectives.collective_ops("ENTRY %main {\n" + line + "\n}\n", 8)
    assert op["group"] == 4 and op["bytes"] == 64 and op["wire_bytes"] == pytest.approx(96)


# ----------------------------------------------------------------------------
# The training step's collectives, as emitted (8 devices, bfloat16 compute).

def _config(spec="32-16", **step):
    c = smoke.get_config()
    c.model.width = 4
    c.projector.spec = spec
    c.compute_dtype = "bfloat16"
    c.step.update({k: v for k, v in step.items() if k in c.step})
    if "c_reduction" in step:
        c.loss.c_reduction = step["c_reduction"]
    return c


def _lowered_step(config):
    mesh = parallel.make_mesh(jax.devices()[:8])
    method = get_method(config.method)
    tx = optax.sgd(1.0)
    rep, sh = parallel.replicated(mesh), NamedSharding(mesh, P("data"))
    ab = lambda tree, s: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                     sharding=s), tree)
    state = ab(jax.eval_shape(lambda: init_state(config, method, tx, mesh, (2, 16, 16, 3))), rep)
    views = {k: jax.ShapeDtypeStruct((16, 16, 16, 3), jnp.float32, sharding=sh)
             for k in ("view1", "view2")}
    key = jax.ShapeDtypeStruct((2,), np.uint32, sharding=rep)
    step = build_train_step(config, mesh, method=method, tx=tx,
                            make_views=lambda b, d, k: (b["view1"], b["view2"]), total_steps=10)
    ops = collectives.collective_ops(step.lower(state, views, None, key).as_text(dialect="hlo"), 8)
    return state.params, ops


def _all_reduced_arrays(ops):
    return collections.Counter((dtype, tuple(int(d) for d in dims.split(",") if d))
                               for op in ops if op["kind"] == "all-reduce"
                               and not op["conditional"] for dtype, dims in op["shapes"])


def _kernel_shapes(params):
    return collections.Counter(tuple(x.shape) for x in jax.tree.leaves(params) if x.ndim > 1)


def test_each_weight_gradient_all_reduced_once_in_float32():
    params, ops = _lowered_step(_config())
    reduced = _all_reduced_arrays(ops)
    assert not any(dtype == "bf16" for dtype, _ in reduced), reduced
    kernels = _kernel_shapes(params)
    assert kernels
    for shape, n in kernels.items():
        assert reduced[("f32", shape)] == n, (shape, reduced[("f32", shape)], n)


def test_per_use_reduction_is_twice_in_bfloat16():
    """The old step (two passes, JAX's per-use cast): what the test above rules out."""
    params, ops = _lowered_step(_config(one_pass=False, grad_reduction="per_use"))
    reduced = _all_reduced_arrays(ops)
    for shape, n in _kernel_shapes(params).items():
        assert reduced[("bf16", shape)] == 2 * n and reduced[("f32", shape)] == 0, shape


@pytest.mark.parametrize("c_reduction", ["gather", "psum"])
def test_barlow_twins_c_from_gathered_embeddings(c_reduction):
    d, n_global = 128, 16   # D > 64: the 64 x 64 picture of C (c_block) is not all of C
    _, ops = _lowered_step(_config(spec=f"32-{d}", c_reduction=c_reduction))
    reduced = _all_reduced_arrays(ops)
    gathered = [op for op in ops if op["kind"] == "all-gather"]
    if c_reduction == "gather":
        assert reduced[("f32", (d, d))] == 0          # no D x D all-reduce ...
        assert [op["bytes"] for op in gathered] == [n_global * d * 4]   # ... an [N, D] gather
        assert [op["kind"] for op in ops].count("all-to-all") == 2     # view 2 by columns, fwd+bwd
    else:
        assert reduced[("f32", (d, d))] == 1 and not gathered
