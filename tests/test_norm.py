"""models/norm.BatchNorm: flax's BatchNorm at views=1, two sequential passes at views=2."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from barlow_jax.models.norm import BatchNorm
from barlow_jax.parallel import make_mesh

KW = dict(momentum=0.9, epsilon=1e-5, param_dtype=jnp.float32)


def _vars(shape, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[-1]
    return {"params": {"scale": jnp.asarray(rng.normal(size=c), jnp.float32),
                       "bias": jnp.asarray(rng.normal(size=c), jnp.float32)},
            "batch_stats": {"mean": jnp.asarray(rng.normal(size=c), jnp.float32),
                            "var": jnp.asarray(rng.uniform(0.5, 2, size=c), jnp.float32)}}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("train", [True, False])
def test_one_view_is_flax_batchnorm(dtype, train):
    x = jnp.asarray(np.random.default_rng(1).normal(2.0, 3.0, size=(6, 5, 5, 4)), dtype)
    v = _vars(x.shape)
    ours = BatchNorm(use_running_average=not train, dtype=dtype, **KW)
    ref = nn.BatchNorm(use_running_average=not train, dtype=dtype, **KW)
    assert (jax.tree.structure(ours.init(jax.random.key(0), x))
            == jax.tree.structure(ref.init(jax.random.key(0), x)))
    y, s = ours.apply(v, x, mutable=["batch_stats"])
    y_ref, s_ref = ref.apply(v, x, mutable=["batch_stats"])
    assert y.dtype == y_ref.dtype == dtype
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
    for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(s_ref)):
        np.testing.assert_array_equal(a, b)


def test_two_views_equal_two_sequential_calls():
    rng = np.random.default_rng(2)
    v1 = jnp.asarray(rng.normal(0.0, 1.0, size=(8, 3, 3, 4)), jnp.float32)
    v2 = jnp.asarray(rng.normal(5.0, 2.0, size=(8, 3, 3, 4)), jnp.float32)
    v = _vars(v1.shape)
    bn = BatchNorm(use_running_average=False, **KW)
    y1, s1 = bn.apply(v, v1, mutable=["batch_stats"])
    y2, s2 = bn.apply({"params": v["params"], **s1}, v2, mutable=["batch_stats"])
    y, s = BatchNorm(use_running_average=False, views=2, **KW).apply(
        v, jnp.concatenate([v1, v2]), mutable=["batch_stats"])
    np.testing.assert_allclose(y, jnp.concatenate([y1, y2]), rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(s2)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # the views really are normalised apart: joint statistics give something else
    joint, _ = bn.apply(v, jnp.concatenate([v1, v2]), mutable=["batch_stats"])
    assert not np.allclose(joint, y, atol=1e-2)
    with pytest.raises(ValueError, match="2 equal views"):
        BatchNorm(use_running_average=False, views=2, **KW).apply(v, v1[:7],
                                                                  mutable=["batch_stats"])


def test_two_views_on_eight_devices_use_global_statistics():
    """Each device holds [its rows of view 1; its rows of view 2]: statistics are per view, global."""
    rng = np.random.default_rng(3)
    v1 = rng.normal(0.0, 1.0, size=(16, 4)).astype(np.float32)
    v2 = rng.normal(3.0, 2.0, size=(16, 4)).astype(np.float32)
    v = _vars(v1.shape)
    want, s_want = BatchNorm(use_running_average=False, views=2, **KW).apply(
        v, jnp.concatenate([v1, v2]), mutable=["batch_stats"])
    bn = BatchNorm(use_running_average=False, views=2, axis_name="data", **KW)

    def body(variables, a, b):
        y, s = bn.apply(variables, jnp.concatenate([a, b]), mutable=["batch_stats"])
        return y[:a.shape[0]], y[a.shape[0]:], s

    mesh = make_mesh(jax.devices()[:8])
    y1, y2, s = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                                      out_specs=(P("data"), P("data"), P())))(v, v1, v2)
    np.testing.assert_allclose(np.concatenate([y1, y2]), want, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(s_want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_forward_views_honours_the_methods_bn_declaration():
    """steps.forward_views: per-view BN in one pass = two passes; joint BN = one batch of 2N."""
    from barlow_jax.models import MLPHead, SSLNet
    from barlow_jax.steps import forward_views
    net = SSLNet(backbone=MLPHead(widths=(8,)), projector=MLPHead(widths=(8, 4)))
    rng = np.random.default_rng(4)
    v1 = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    v2 = jnp.asarray(rng.normal(2.0, 3.0, size=(6, 5)), jnp.float32)
    variables = net.init(jax.random.key(0), v1)
    args = (net, variables["params"], variables["batch_stats"], v1, v2)
    one = forward_views(*args, one_pass=True)
    two = forward_views(*args, one_pass=False)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    o1, o2, stats = forward_views(*args, bn_views="joint")
    want, upd = net.apply(variables, jnp.concatenate([v1, v2]), train=True,
                          mutable=["batch_stats"])
    np.testing.assert_allclose(jnp.concatenate([o1["z"], o2["z"]]), want["z"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(upd["batch_stats"])):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert not np.allclose(o1["z"], one[0]["z"], atol=1e-3)
    from barlow_jax.methods import get_method
    assert get_method("simclr").bn_views == "joint"
    assert {get_method(m).bn_views for m in ("barlow_twins", "vicreg", "byol", "simsiam")} == {
        "per_view"}


def test_remat_keeps_parameter_names_and_values():
    """model.remat recomputes block activations: same parameter tree, outputs and gradients."""
    from barlow_jax.models import build_resnet
    x = jnp.asarray(np.random.default_rng(5).normal(size=(4, 16, 16, 3)), jnp.float32)
    plain = build_resnet("resnet_tiny", width=4, cifar_stem=True)
    remat = build_resnet("resnet_tiny", width=4, cifar_stem=True, remat=True)
    v = plain.init(jax.random.key(0), x)
    assert jax.tree.structure(v) == jax.tree.structure(remat.init(jax.random.key(0), x))

    def loss(params, model):
        out, _ = model.apply({"params": params, "batch_stats": v["batch_stats"]}, x,
                             train=True, views=2, mutable=["batch_stats"])
        return jnp.sum(out ** 2)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g_plain, g_remat = grad(v["params"], plain), grad(v["params"], remat)
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
