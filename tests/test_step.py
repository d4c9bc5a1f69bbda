"""A whole training step at 1 device equals the same step at 8 devices.

Views are fixed (no augmentation randomness) so both runs see the same
global batch. Gradients are read off an SGD(lr=1) update: new = old - grad.
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


def _config():
    c = smoke.get_config()
    c.model.width = 4
    c.projector.spec = "32-16"
    return c


def _fixed_views(batch, device_data, key):
    del device_data, key
    return batch["view1"], batch["view2"]


def _run(n_dev, config, views, tx):
    mesh = parallel.make_mesh(jax.devices()[:n_dev])
    method = get_method(config.method)
    state = init_state(config, method, tx, mesh, (2, 16, 16, 3))
    params0 = jax.device_get(state.params)
    step = make_train_step(mesh, model=build_ssl_net(config, axis_name="data"),
                           target_model=None, method=method, tx=tx,
                           make_views=_fixed_views, loss_config=config.loss)
    batch = jax.device_put(views, NamedSharding(mesh, P("data")))
    key = parallel.replicate(jax.random.key_data(jax.random.key(0)), mesh)
    new_state, metrics = step(state, batch, None, key)
    return params0, jax.device_get(new_state), jax.device_get(metrics)


@pytest.fixture(scope="module")
def results():
    config = _config()
    rng = np.random.default_rng(0)
    v1 = rng.normal(size=(16, 16, 16, 3)).astype(np.float32)
    views = {"view1": v1, "view2": (v1 + 0.3 * rng.normal(size=v1.shape)).astype(np.float32)}
    tx = optax.sgd(1.0)
    return {n: _run(n, config, views, tx) for n in (1, 8)}


def test_same_loss(results):
    (_, _, m1), (_, _, m8) = results[1], results[8]
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m8["on_diag"], m1["on_diag"], rtol=1e-5)
    np.testing.assert_allclose(m8["off_diag"], m1["off_diag"], rtol=1e-5)


def test_same_gradients(results):
    (p0, s1, _), (_, s8, _) = results[1], results[8]
    g1 = jax.tree.map(lambda a, b: a - b, p0, s1.params)
    g8 = jax.tree.map(lambda a, b: a - b, p0, s8.params)
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(g1))
    assert scale > 0
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g8)):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4 * scale,
                                   err_msg=jax.tree_util.keystr(path))


def test_same_batch_statistics(results):
    (_, s1, _), (_, s8, _) = results[1], results[8]
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(s1.batch_stats),
                            jax.tree.leaves(s8.batch_stats)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    # running statistics really moved away from their init (mean 0, var 1)
    assert any(np.abs(x).max() > 1e-3 for x in jax.tree.leaves(s1.batch_stats))


def test_step_counter(results):
    assert int(results[8][1].step) == 1
