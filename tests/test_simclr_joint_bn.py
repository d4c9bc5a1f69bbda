"""Which BatchNorm statistics each method's two views share, checked on a whole step.

google-research/simclr tf2 runs the network ONCE over both views
(``run.py``/``model.py``: the two augmentations concatenated along the batch,
``features = tf.concat(features_list, 0)``), so every BatchNorm of the
backbone and the projection head normalises with the statistics of all 2N
images (``global_bn``: of all replicas) and updates its moving averages once
per step. Barlow Twins, VICReg, BYOL and SimSiam run each view separately
(``self.backbone(y1)``, ``self.backbone(y2)``): per-view statistics, two
moving-average updates.

Each test runs the trainer's real step (``steps.make_train_step``, 8 fake
devices, fixed views, SGD(1) so the gradient reads as old - new parameters)
and compares it with a single-device reference written from those semantics:
``model.apply`` on ``concat([v1, v2])`` (joint) or on v1 then v2 (per view).
The two references differ by far more than the tolerance, so each test can
tell them apart (``test_the_two_references_differ``).

SimCLR declares ``bn_views='joint'`` (methods/simclr.py), so the step runs its
network once over ``[v1; v2]``; the other methods declare per-view statistics.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from barlow_jax import parallel
from barlow_jax.methods import get_method
from barlow_jax.models import build_ssl_net
from barlow_jax.state import TrainState
from barlow_jax.steps import make_train_step
from configs import smoke

N = 16


def _config(name):
    c = smoke.get_config(name)
    c.model.width = 4
    return c


def _views():
    rng = np.random.default_rng(0)
    v1 = rng.normal(size=(N, 16, 16, 3)).astype(np.float32)
    # view 2 on another scale and offset: joint and per-view statistics differ clearly
    v2 = (1.7 * v1 + 0.8 + 0.3 * rng.normal(size=v1.shape)).astype(np.float32)
    return v1, v2


def _initial(config):
    v = build_ssl_net(config).init(jax.random.key(config.seed), jnp.zeros((2, 16, 16, 3)),
                                   train=False)
    return v["params"], v["batch_stats"]


def _step(config, v1, v2):
    """The trainer's step on 8 devices: (loss, gradient, new batch_stats)."""
    mesh = parallel.make_mesh(jax.devices()[:8])
    method = get_method(config.method)
    tx = optax.sgd(1.0)
    params, bs = jax.device_get(_initial(config))   # host copies: the step donates its state
    state = jax.device_put(TrainState(step=jnp.zeros([], jnp.int32), params=params,
                                      batch_stats=bs, opt_state=tx.init(params), target=None),
                           parallel.replicated(mesh))
    step = make_train_step(mesh, model=build_ssl_net(config, axis_name="data"),
                           target_model=None, method=method, tx=tx,
                           make_views=lambda b, d, k: (b["view1"], b["view2"]),
                           loss_config=config.loss)
    batch = jax.device_put({"view1": v1, "view2": v2}, NamedSharding(mesh, P("data")))
    key = parallel.replicate(jax.random.key_data(jax.random.key(0)), mesh)
    new, metrics = jax.device_get(step(state, batch, None, key))
    grad = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), params, new.params)
    return float(metrics["loss"]), grad, new.batch_stats


def _reference(config, v1, v2, joint):
    """Single device, full batch: one pass over [v1; v2] (joint) or one pass per view."""
    model = build_ssl_net(config)
    method = get_method(config.method)
    params, bs = _initial(config)

    def loss_fn(p):
        if joint:
            out, upd = model.apply({"params": p, "batch_stats": bs},
                                   jnp.concatenate([v1, v2]), train=True,
                                   mutable=["batch_stats"])
            out1 = jax.tree.map(lambda x: x[:N], out)
            out2 = jax.tree.map(lambda x: x[N:], out)
        else:
            out1, upd = model.apply({"params": p, "batch_stats": bs}, v1, train=True,
                                    mutable=["batch_stats"])
            out2, upd = model.apply({"params": p, "batch_stats": upd["batch_stats"]}, v2,
                                    train=True, mutable=["batch_stats"])
        loss, _ = method.loss(out1, out2, None, None, config.loss, None)
        return loss, upd["batch_stats"]

    with jax.default_matmul_precision("highest"):
        (loss, new_bs), grad = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return float(loss), jax.device_get(grad), jax.device_get(new_bs)


def _close(got, want, what, rtol=2e-3, atol_frac=2e-4):
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(want))
    for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol_frac * scale,
                                   err_msg=f"{what} {jax.tree_util.keystr(path)}")


def _check(name, joint):
    config = _config(name)
    v1, v2 = _views()
    loss, grad, bs = _step(config, v1, v2)
    want_loss, want_grad, want_bs = _reference(config, v1, v2, joint)
    assert loss == pytest.approx(want_loss, rel=1e-4)
    _close(grad, want_grad, f"{name} gradient")
    _close(bs, want_bs, f"{name} batch_stats", rtol=1e-4, atol_frac=1e-6)


def test_the_two_references_differ():
    """Joint vs per-view statistics: far apart in loss, gradient and running averages."""
    config = _config("simclr")
    v1, v2 = _views()
    lj, gj, bj = _reference(config, v1, v2, joint=True)
    lp, gp, bp = _reference(config, v1, v2, joint=False)
    assert abs(lj - lp) > 1e-2 * abs(lj)
    rel = lambda a, b: max(float(np.abs(x - y).max()) for x, y in
                           zip(jax.tree.leaves(a), jax.tree.leaves(b))) / max(
        float(np.abs(y).max()) for y in jax.tree.leaves(b))
    assert rel(gj, gp) > 0.05 and rel(bj, bp) > 0.05


def test_barlow_twins_keeps_per_view_statistics():
    """BT, VICReg, BYOL and SimSiam share the step's per-view pass; BT stands for them."""
    _check("barlow_twins", joint=False)


def test_simclr_step_normalises_both_views_jointly():
    _check("simclr", joint=True)
