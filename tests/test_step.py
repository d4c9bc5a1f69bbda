"""A whole training step at 1 device equals the same step at 8 devices.

Views are fixed (no augmentation randomness) so both runs see the same
global batch. Gradients are read off an SGD(lr=1) update: new = old - grad.

Compared: float32 and bfloat16 compute (the default step: one pass over both
views, each gradient all-reduced once in float32, Barlow Twins' C from
gathered embeddings), and the one-pass step against the two-pass one.
"""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from barlow_jax import parallel
from barlow_jax.methods import get_method
from barlow_jax.models import build_ssl_net
from barlow_jax.steps import make_train_step
from barlow_jax.train import init_state
from configs import smoke

# bfloat16, 1 vs 8 devices: each device's weight gradient is a bfloat16 matmul output
# (rounded to 8 bits of mantissa) before the float32 all-reduce, where one device rounds
# the full-batch sum once. Measured largest differences: see test_same_gradients_bf16.
BF16_GRAD_RTOL, BF16_GRAD_ATOL = 1e-2, 5e-3   # atol relative to the largest gradient


def _config(dtype="float32"):
    c = smoke.get_config()
    c.model.width = 4
    c.projector.spec = "32-16"
    c.compute_dtype = dtype
    return c


def _fixed_views(batch, device_data, key):
    del device_data, key
    return batch["view1"], batch["view2"]


_INITIAL = {}


def _initial_state(config, tx):
    """init_state's values, computed once on one device (parameters are float32 whatever
    the compute dtype, so the float32 and bfloat16 runs start from the same state)."""
    if "state" not in _INITIAL:
        mesh = parallel.make_mesh(jax.devices()[:1])
        _INITIAL["state"] = jax.device_get(init_state(config, get_method(config.method), tx,
                                                      mesh, (2, 16, 16, 3)))
    return _INITIAL["state"]


def _run(n_dev, config, views, tx, one_pass=True):
    mesh = parallel.make_mesh(jax.devices()[:n_dev])
    method = get_method(config.method)
    initial = _initial_state(config, tx)
    state = jax.device_put(initial, parallel.replicated(mesh))
    params0 = initial.params
    step = make_train_step(mesh, model=build_ssl_net(config, axis_name="data"),
                           target_model=None, method=method, tx=tx,
                           make_views=_fixed_views, loss_config=config.loss,
                           one_pass=one_pass)
    batch = jax.device_put(views, NamedSharding(mesh, P("data")))
    key = parallel.replicate(jax.random.key_data(jax.random.key(0)), mesh)
    new_state, metrics = step(state, batch, None, key)
    return params0, jax.device_get(new_state), jax.device_get(metrics)


def _views():
    rng = np.random.default_rng(0)
    v1 = rng.normal(size=(16, 16, 16, 3)).astype(np.float32)
    return {"view1": v1, "view2": (v1 + 0.3 * rng.normal(size=v1.shape)).astype(np.float32)}


@pytest.fixture(scope="module")
def results():
    config, views, tx = _config(), _views(), optax.sgd(1.0)
    out = {n: _run(n, config, views, tx) for n in (1, 8)}
    out["two_pass_8"] = _run(8, config, views, tx, one_pass=False)
    return out


@pytest.fixture(scope="module")
def results_bf16():
    config, views, tx = _config("bfloat16"), _views(), optax.sgd(1.0)
    return {n: _run(n, config, views, tx) for n in (1, 8)}


def _grads(r):
    p0, s, _ = r
    return jax.tree.map(lambda a, b: np.float64(a) - np.float64(b), p0, s.params)


def _assert_close(want, got, rtol, atol_frac, what):
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(want))
    assert scale > 0
    assert jax.tree.structure(want) == jax.tree.structure(got)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol_frac * scale,
                                   err_msg=f"{what} {jax.tree_util.keystr(path)}")


def test_same_loss(results):
    (_, _, m1), (_, _, m8) = results[1], results[8]
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m8["on_diag"], m1["on_diag"], rtol=1e-5)
    np.testing.assert_allclose(m8["off_diag"], m1["off_diag"], rtol=1e-5)
    np.testing.assert_allclose(m8["c_block"], m1["c_block"], rtol=1e-4, atol=1e-6)


def test_same_gradients(results):
    _assert_close(_grads(results[1]), _grads(results[8]), 1e-3, 1e-4, "gradient")


def test_same_batch_statistics(results):
    (_, s1, _), (_, s8, _) = results[1], results[8]
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(s1.batch_stats),
                            jax.tree.leaves(s8.batch_stats)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    # running statistics really moved away from their init (mean 0, var 1)
    assert any(np.abs(x).max() > 1e-3 for x in jax.tree.leaves(s1.batch_stats))


def test_one_pass_equals_two_passes(results):
    """Concatenated views with per-view BN = the views one after the other (8 devices)."""
    (_, s1, m1), (_, s2, m2) = results[8], results["two_pass_8"]
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    _assert_close(_grads(results["two_pass_8"]), _grads(results[8]), 1e-3, 1e-4, "gradient")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(s2.batch_stats),
                            jax.tree.leaves(s1.batch_stats)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))


def test_step_counter(results):
    assert int(results[8][1].step) == 1


def test_same_loss_bf16(results_bf16):
    (_, _, m1), (_, _, m8) = results_bf16[1], results_bf16[8]
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-4)


def test_same_gradients_bf16(results_bf16):
    g1, g8 = _grads(results_bf16[1]), _grads(results_bf16[8])
    _assert_close(g1, g8, BF16_GRAD_RTOL, BF16_GRAD_ATOL, "bf16 gradient")
    # report the measured size of the difference (pytest -s shows it)
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(g1))
    worst = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g1),
                                                          jax.tree.leaves(g8)))
    print(f"bf16 1 vs 8 devices: largest gradient difference {worst / scale:.2e} of the "
          f"largest gradient")


def test_same_batch_statistics_bf16(results_bf16):
    (_, s1, _), (_, s8, _) = results_bf16[1], results_bf16[8]
    _assert_close(s1.batch_stats, s8.batch_stats, 1e-3, 1e-5, "bf16 batch_stats")
