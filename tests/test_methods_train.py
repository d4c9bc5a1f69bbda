"""Every method trains end to end, like Barlow Twins in test_train.py / test_step.py.

* A whole training step (views fixed, SGD(1) so gradients read as old - new)
  at 1 device equals the same step at 8 fake devices for VICReg, SimCLR,
  BYOL and SimSiam: loss, metrics, gradients, BN statistics and, for BYOL,
  the EMA-updated target parameters and the target's own BN statistics.
* The loop on each method's smoke setting, stopped by SIGTERM and resumed,
  logs the same per-step losses and metrics and ends in the same
  checkpoint as an uninterrupted run (BYOL on 8 devices: the EMA target
  must be checkpointed and restored).
* The heads' final-BN options (``last_bn_affine``) against NumPy, and
  SimSiam's fixed predictor learning rate against PyTorch's SGD update rule.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from barlow_jax import parallel
from barlow_jax.methods import ema, get_method
from barlow_jax.models import MLPHead, build_ssl_net
from barlow_jax.optim import build_optimizer
from barlow_jax.state import TrainState
from barlow_jax.steps import make_train_step
from configs import smoke
from tests.loop_helpers import straight_and_interrupted_in_process

METHODS = ("vicreg", "simclr", "byol", "simsiam")
# The method's own metrics, logged every step, that a resumed run must reproduce.
METHOD_METRICS = {"vicreg": ("invariance", "variance", "covariance"), "simclr": ("accuracy",),
                  "byol": ("cos_sim", "ema_tau"), "simsiam": ("cos_sim", "z_std", "lr_predictor")}
EXACT_KEYS = ("loss", "lr", "grad_norm", "param_norm")


def _leaves(tree):
    return jax.tree_util.tree_leaves_with_path(tree)


# ----------------------------------------------------------------------------
# Smoke settings.

def test_smoke_config_per_method():
    default = smoke.get_config()
    assert default.method == "barlow_twins"
    assert default.to_dict() == smoke.get_config("barlow_twins").to_dict()
    assert (default.projector.spec, default.predictor.spec, default.model.width) == ("64-64", "", 8)
    for name in METHODS:
        c = smoke.get_config(name)
        c.lock()
        method = get_method(c.method)
        assert c.method == name
        assert bool(c.predictor.spec) == method.needs_predictor
        assert (c.model.name, c.data.source, c.batch_size) == ("resnet_tiny", "synthetic", 32)
    assert smoke.get_config("byol").loss.ema_start == 0.99
    assert smoke.get_config("simclr").loss.temperature == 0.2
    assert smoke.get_config("simclr").projector.last_bn_affine == "scale"
    assert smoke.get_config("simsiam").projector.last_bn_affine == "none"
    with pytest.raises(ValueError, match="configs/smoke.py:<method>"):
        smoke.get_config("moco")


# ----------------------------------------------------------------------------
# last_bn_affine: the heads' final BN.

def _np_bn(h, eps=1e-5):
    h = np.asarray(h, np.float64)
    return (h - h.mean(0)) / np.sqrt(h.var(0) + eps)


@pytest.mark.parametrize("affine,names", [("scale_bias", {"scale", "bias"}),
                                          ("scale", {"scale"}), ("none", set())])
def test_last_bn_affine_parameters_and_output(affine, names):
    head = MLPHead(widths=(6,), last_bias=False, last_bn=True, last_bn_affine=affine)
    x = np.random.default_rng(0).normal(size=(10, 5)).astype(np.float32)
    v = head.init(jax.random.key(0), x, train=False)
    assert set(v["params"].get("bn0", {})) == names
    assert set(v["batch_stats"]["bn0"]) == {"mean", "var"}
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32),
                          v["params"])
    out, _ = head.apply({"params": params, "batch_stats": v["batch_stats"]}, x, train=True,
                        mutable=["batch_stats"])
    want = _np_bn(x @ np.asarray(params["linear0"]["kernel"], np.float64))
    if "scale" in names:
        want = want * np.asarray(params["bn0"]["scale"])
    if "bias" in names:
        want = want + np.asarray(params["bn0"]["bias"])
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def test_last_bn_affine_default_and_hidden_bns_unchanged():
    x = jnp.zeros((4, 5))
    v = MLPHead(widths=(16, 8), last_bn=True).init(jax.random.key(0), x)
    assert set(v["params"]["bn0"]) == {"scale", "bias"} == set(v["params"]["bn1"])
    v = MLPHead(widths=(16, 8), last_bn=True, last_bn_affine="none").init(jax.random.key(0), x)
    assert set(v["params"]["bn0"]) == {"scale", "bias"} and "bn1" not in v["params"]
    v = MLPHead(widths=(16, 8), last_bn_affine="none").init(jax.random.key(0), x)
    assert "bn1" not in v.get("batch_stats", {})   # no final BN: the option has no effect
    with pytest.raises(ValueError, match="last_bn_affine='centre'.*'scale'"):
        MLPHead(widths=(8,), last_bn=True, last_bn_affine="centre")


@pytest.mark.parametrize("name,affine,names", [("simclr_in1k", "scale", {"scale"}),
                                               ("simsiam_cifar10", "none", set())])
def test_configs_build_the_official_final_bn(name, affine, names):
    import importlib
    c = importlib.import_module(f"configs.{name}").get_config()
    assert c.projector.last_bn and c.projector.last_bn_affine == affine
    c.model.name, c.model.width = "resnet_tiny", 4
    c.projector.spec = "16-8"
    if c.predictor.spec:
        c.predictor.spec = "4-8"
    v = jax.eval_shape(build_ssl_net(c).init, jax.random.key(0), jnp.zeros((2, 16, 16, 3)))
    assert set(v["params"]["projector"].get("bn1", {})) == names
    assert set(v["batch_stats"]["projector"]["bn1"]) == {"mean", "var"}


# ----------------------------------------------------------------------------
# optimizer.fix_predictor_lr (SimSiam's --fix-pred-lr).

def _sgd_config(**kw):
    c = smoke.get_config("simsiam").optimizer
    c.update(kw)
    return c


def test_fix_predictor_lr_matches_torch_sgd_rule():
    """PyTorch SGD: d = g + wd p; buf = m buf + d (buf = d at first); p -= lr buf, with
    lr = base x B/256 constant for the predictor and the cosine schedule elsewhere."""
    cfg = _sgd_config(lr_weights=0.4, weight_decay=0.1, momentum=0.9, fix_predictor_lr=True)
    total, batch = 10, 512
    tx, scheds = build_optimizer(cfg, batch_size=batch, steps_per_epoch=5, total_steps=total)
    rng = np.random.default_rng(0)
    params = {"backbone": {"w": rng.normal(size=(3, 2))}, "projector": {"b": rng.normal(size=3)},
              "predictor": {"w": rng.normal(size=(2, 2)), "b": rng.normal(size=2)}}
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    grads = [jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), params)
             for _ in range(3)]
    state, p = tx.init(params), params
    ref = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    buf = jax.tree.map(np.zeros_like, ref)
    peak = 0.4 * batch / 256
    for t, g in enumerate(grads):
        upd, state = tx.update(g, state, p)
        p = optax.apply_updates(p, upd)
        cos_lr = peak * 0.5 * (1 + math.cos(math.pi * t / total))
        for top in ref:
            lr = peak if top == "predictor" else cos_lr
            for k in ref[top]:
                d = np.asarray(g[top][k], np.float64) + 0.1 * ref[top][k]
                buf[top][k] = 0.9 * buf[top][k] + d
                ref[top][k] = ref[top][k] - lr * buf[top][k]
        np.testing.assert_allclose(float(scheds["lr"](t)), cos_lr, rtol=1e-5)
        assert float(scheds["lr_predictor"](t)) == pytest.approx(peak)
    for (path, a), b in zip(_leaves(p), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))

    # Off (the default): the predictor follows the schedule like everything else.
    tx_off, scheds_off = build_optimizer(
        _sgd_config(lr_weights=0.4, weight_decay=0.1, momentum=0.9, fix_predictor_lr=False),
        batch_size=batch, steps_per_epoch=5, total_steps=total)
    assert "lr_predictor" not in scheds_off

    def second_update(opt):
        s = opt.init(params)
        for g in grads[:2]:
            u, s = opt.update(g, s, params)
        return u

    on, off = second_update(tx), second_update(tx_off)
    assert not np.allclose(off["predictor"]["w"], on["predictor"]["w"])
    np.testing.assert_allclose(off["backbone"]["w"], on["backbone"]["w"], rtol=1e-6)


def test_fix_predictor_lr_refuses_lars_and_a_net_without_predictor():
    lars = ml_collections.ConfigDict(smoke.get_config("byol").optimizer.to_dict())
    lars.fix_predictor_lr = True
    with pytest.raises(ValueError, match="fix_predictor_lr.*'sgd' only"):
        build_optimizer(lars, batch_size=32, steps_per_epoch=1, total_steps=2)
    tx, _ = build_optimizer(_sgd_config(fix_predictor_lr=True), batch_size=32,
                            steps_per_epoch=1, total_steps=2)
    with pytest.raises(ValueError, match="no predictor.*predictor.spec"):
        tx.init({"backbone": {"w": jnp.zeros((2, 2))}})


# ----------------------------------------------------------------------------
# One whole training step: 1 device == 8 devices, for every method.

def _fixed_views(batch, device_data, key):
    del device_data, key
    return batch["view1"], batch["view2"]


def _initial_state(config, method, tx):
    """init_state's TrainState, built eagerly on the host.

    Eager ops are compiled once per shape and cached, so the four methods
    (same backbone) share most of the initialisation's compile time, which
    under jit is dominated by one threefry program per parameter.
    """
    variables = build_ssl_net(config).init(jax.random.key(config.seed),
                                           jnp.zeros((2, 16, 16, 3)), train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]
    return jax.device_get(TrainState(
        step=jnp.zeros([], jnp.int32), params=params, batch_stats=batch_stats,
        opt_state=tx.init(params),
        target=ema.init_target(params, batch_stats) if method.ema_target else None))


def _run_step(n_dev, config, views, initial):
    mesh = parallel.make_mesh(jax.devices()[:n_dev])
    method = get_method(config.method)
    tx = optax.sgd(1.0)
    state = jax.device_put(initial, parallel.replicated(mesh))
    step = make_train_step(
        mesh, model=build_ssl_net(config, axis_name="data"),
        target_model=(build_ssl_net(config, axis_name="data", with_predictor=False)
                      if method.ema_target else None),
        method=method, tx=tx, make_views=_fixed_views, loss_config=config.loss,
        ema_tau=method.ema_tau(config.loss, 10) if method.ema_target else None)
    batch = jax.device_put(views, NamedSharding(mesh, P("data")))
    key = parallel.replicate(jax.random.key_data(jax.random.key(0)), mesh)
    new_state, metrics = step(state, batch, None, key)
    return initial, jax.device_get(new_state), jax.device_get(metrics)


@pytest.fixture(scope="module", params=METHODS)
def step_results(request):
    config = smoke.get_config(request.param)
    config.model.width = 4
    rng = np.random.default_rng(0)
    v1 = rng.normal(size=(16, 16, 16, 3)).astype(np.float32)
    views = {"view1": v1, "view2": (v1 + 0.3 * rng.normal(size=v1.shape)).astype(np.float32)}
    initial = _initial_state(config, get_method(config.method), optax.sgd(1.0))
    return request.param, {n: _run_step(n, config, views, initial) for n in (1, 8)}


def _assert_trees_close(a, b, rtol, atol_frac, what):
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(a))
    assert scale > 0, f"{what}: all zero"
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(_leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(y, x, rtol=rtol, atol=atol_frac * scale,
                                   err_msg=f"{what} {jax.tree_util.keystr(path)}")


def test_step_same_loss_and_metrics(step_results):
    name, r = step_results
    (_, _, m1), (_, _, m8) = r[1], r[8]
    assert set(m1) == set(m8) and set(METHOD_METRICS[name]) - {"lr_predictor"} <= set(m1)
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5, atol=1e-6)
    for k in m1:
        np.testing.assert_allclose(m8[k], m1[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert np.isfinite(m1["loss"])


def test_step_same_gradients(step_results):
    name, r = step_results
    (b1, s1, _), (b8, s8, _) = r[1], r[8]
    g1 = jax.tree.map(lambda a, b: a - b, b1.params, s1.params)
    g8 = jax.tree.map(lambda a, b: a - b, b8.params, s8.params)
    _assert_trees_close(g1, g8, 1e-3, 1e-4, f"{name} gradient")
    for part in ("backbone", "projector") + (("predictor",) if "predictor" in g1 else ()):
        assert max(float(np.abs(x).max()) for x in jax.tree.leaves(g1[part])) > 0, part


def test_step_same_batch_statistics(step_results):
    name, r = step_results
    (_, s1, _), (_, s8, _) = r[1], r[8]
    for (path, a), b in zip(_leaves(s1.batch_stats), jax.tree.leaves(s8.batch_stats)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6,
                                   err_msg=f"{name} {jax.tree_util.keystr(path)}")
    assert int(s1.step) == int(s8.step) == 1
    assert (s8.target is None) == (name != "byol")


def test_step_byol_ema_target(step_results):
    name, r = step_results
    if name != "byol":  # no target network: no EMA step either
        assert all("ema_tau" not in r[n][2] and r[n][1].target is None for n in (1, 8))
        return
    tau = 0.99  # smoke byol: ema_start at step 0
    for n in (1, 8):
        before, after, m = r[n]
        np.testing.assert_allclose(m["ema_tau"], tau, rtol=1e-7)
        assert set(after.target["params"]) == {"backbone", "projector"}
        # target' = tau target + (1 - tau) online', leaf by leaf (NumPy, float64)
        for top in ("backbone", "projector"):
            for (path, t0), t1, o1 in zip(_leaves(before.target["params"][top]),
                                          jax.tree.leaves(after.target["params"][top]),
                                          jax.tree.leaves(after.params[top])):
                want = tau * np.float64(t0) + (1 - tau) * np.float64(o1)
                np.testing.assert_allclose(t1, want, rtol=1e-6, atol=1e-7,
                                           err_msg=f"{n} dev {top}{jax.tree_util.keystr(path)}")
        # The target's BN statistics are its own forward pass's: at step 1 the target
        # equals the online net, so they equal the online backbone/projector statistics.
        for top in ("backbone", "projector"):
            _assert_trees_close(after.batch_stats[top], after.target["batch_stats"][top],
                                1e-5, 1e-6, f"{n} dev target batch_stats {top}")
    (b1, s1, _), (b8, s8, _) = r[1], r[8]
    d1 = jax.tree.map(lambda a, b: a - b, s1.target["params"], b1.target["params"])
    d8 = jax.tree.map(lambda a, b: a - b, s8.target["params"], b8.target["params"])
    _assert_trees_close(d1, d8, 1e-3, 1e-4, "target params update")
    _assert_trees_close(s1.target["batch_stats"], s8.target["batch_stats"], 1e-4, 1e-6,
                        "target batch_stats")


# ----------------------------------------------------------------------------
# The loop: SIGTERM + resume equals an uninterrupted run, for every method (in this process;
# tests/test_train.py runs the same through the CLI for Barlow Twins).

STEPS = 25


def _np_ema_tau(step, total, base):
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(step, total) / total) + 1) / 2


# The straight, interrupted and resumed runs share compiled programs through the persistent
# cache that tests/conftest.py sets.
@pytest.mark.parametrize("method,n_devices",
                         [("vicreg", 1), ("simclr", 1), ("simsiam", 1), ("byol", 8)])
def test_sigterm_then_resume_equals_uninterrupted(tmp_path, method, n_devices, mesh_of):
    from barlow_jax.checkpointing import load_variables

    config = smoke.get_config(method)
    config.num_train_steps, config.log_every_steps, config.checkpoint_every_steps = STEPS, 1, 10
    ref_list, got, straight, work, stdout = straight_and_interrupted_in_process(
        config, tmp_path, STEPS, mesh_of(n_devices))
    assert f"Training {method} on {n_devices} device(s)" in stdout
    ref = {m["step"]: m for m in ref_list}
    for m in got:
        for k in EXACT_KEYS + METHOD_METRICS[method]:
            np.testing.assert_allclose(m[k], ref[m["step"]][k], rtol=1e-6, atol=1e-9,
                                       err_msg=f"{k} at step {m['step']}")

    # The final checkpoints agree too: online params, BN statistics, and BYOL's target.
    _, v_ref, step_ref = load_variables(straight)
    _, v_got, step_got = load_variables(work)
    assert step_ref == step_got == STEPS
    assert (v_got["target"] is None) == (method != "byol")
    assert jax.tree.structure(v_ref) == jax.tree.structure(v_got)
    for (path, a), b in zip(_leaves(v_ref), jax.tree.leaves(v_got)):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path))

    if method == "byol":
        # The logged tau is the one the update at step s used: schedule(s - 1).
        taus = [ref[s]["ema_tau"] for s in range(1, STEPS + 1)]
        np.testing.assert_allclose(taus, [_np_ema_tau(s - 1, STEPS, 0.99)
                                          for s in range(1, STEPS + 1)], atol=1e-6)
        assert set(v_got["target"]["params"]) == {"backbone", "projector"}
        moved = jax.tree.map(lambda t, o: float(np.abs(t - o).max()),
                             v_got["target"]["params"], {k: v_got["params"][k]
                                                         for k in ("backbone", "projector")})
        assert max(jax.tree.leaves(moved)) > 0, "the target should lag the online network"
    if method == "simsiam":
        lrs = [ref[s]["lr"] for s in ref]
        assert len(set(np.round(lrs, 9))) > 10
        np.testing.assert_allclose([ref[s]["lr_predictor"] for s in ref], 0.05 * 32 / 256,
                                   rtol=1e-6)
