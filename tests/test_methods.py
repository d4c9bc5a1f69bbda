"""Method adapters, the BYOL EMA helpers, the target-network tree and the method configs."""

import importlib
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from barlow_jax.methods import byol as byol_mod
from barlow_jax.methods import ema
from barlow_jax.methods import simclr as simclr_mod
from barlow_jax.methods import simsiam as simsiam_mod
from barlow_jax.methods import vicreg as vicreg_mod
from configs import base

# name -> (module, needs_predictor, ema_target)
NEW_METHODS = {
    "vicreg": (vicreg_mod, False, False),
    "simclr": (simclr_mod, False, False),
    "byol": (byol_mod, True, True),
    "simsiam": (simsiam_mod, True, False),
}
CONFIGS = [f"{m}_{d}" for m in NEW_METHODS for d in ("in1k", "cifar10")]


def rand(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# ----------------------------------------------------------------------------
# EMA schedule and update.

def np_ema_decay(step, total, base=0.996, end=1.0):
    """BYOL paper: tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2 (end = 1)."""
    k = min(max(step, 0), total)
    return end - (end - base) * (math.cos(math.pi * k / total) + 1) / 2


def test_ema_decay_endpoints_and_schedule():
    assert float(ema.ema_decay(0, 1000)) == pytest.approx(0.996, abs=1e-7)
    assert float(ema.ema_decay(1000, 1000)) == pytest.approx(1.0, abs=1e-7)
    assert float(ema.ema_decay(500, 1000)) == pytest.approx(0.998, abs=1e-7)
    assert float(ema.ema_decay(5000, 1000)) == pytest.approx(1.0, abs=1e-7)   # clipped
    assert float(ema.ema_decay(0, 10, base=0.99, end=0.999)) == pytest.approx(0.99, abs=1e-7)
    assert float(ema.ema_decay(10, 10, base=0.99, end=0.999)) == pytest.approx(0.999, abs=1e-7)
    steps = np.arange(0, 1001, 37)
    jitted = jax.jit(lambda s: ema.ema_decay(s, 1000))
    got = np.array([float(jitted(jnp.int32(s))) for s in steps])
    want = np.array([np_ema_decay(int(s), 1000) for s in steps])
    np.testing.assert_allclose(got, want, atol=1e-7)
    assert np.all(np.diff(got) >= 0)
    with pytest.raises(ValueError, match="total_steps"):
        ema.ema_decay(0, 0)


def test_ema_update_matches_numpy():
    target = {"a": {"kernel": rand(0, (3, 4)), "bias": rand(1, (4,))}, "b": rand(2, (2,))}
    online = {"a": {"kernel": rand(3, (3, 4)), "bias": rand(4, (4,))}, "b": rand(5, (2,))}
    tau = 0.996
    new = jax.jit(ema.ema_update)(target, online, tau)
    for path in (("a", "kernel"), ("a", "bias"), ("b",)):
        t, o, n = target, online, new
        for k in path:
            t, o, n = t[k], o[k], n[k]
        want = tau * np.asarray(t, np.float64) + (1 - tau) * np.asarray(o, np.float64)
        np.testing.assert_allclose(np.asarray(n), want, rtol=1e-6, atol=1e-7)
        assert n.dtype == t.dtype
    same = ema.ema_update(target, online, 1.0)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(same),
                                                    jax.tree.leaves(target)))
    copied = ema.ema_update(target, online, 0.0)
    for a, b in zip(jax.tree.leaves(copied), jax.tree.leaves(online)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="same structure"):
        ema.ema_update(target, {"a": online["a"]}, 0.5)


def test_init_and_update_target_skip_the_predictor():
    params = {"backbone": {"w": rand(0, (3,))}, "projector": {"w": rand(1, (2, 2))},
              "predictor": {"w": rand(2, (2, 2))}}
    batch_stats = {"backbone": {"mean": rand(3, (3,))}, "projector": {"mean": rand(4, (2,))},
                   "predictor": {"mean": rand(5, (2,))}}
    target = ema.init_target(params, batch_stats)
    assert set(target["params"]) == {"backbone", "projector"}
    assert set(target["batch_stats"]) == {"backbone", "projector"}
    np.testing.assert_array_equal(target["params"]["projector"]["w"], params["projector"]["w"])

    online = jax.tree.map(lambda x: x + 1.0, params)
    new_bs = jax.tree.map(lambda x: x * 2.0, target["batch_stats"])
    updated = jax.jit(ema.update_target)(target, online, 0.9, new_bs)
    np.testing.assert_allclose(updated["params"]["backbone"]["w"],
                               np.asarray(params["backbone"]["w"]) + 0.1, rtol=1e-6)
    assert "predictor" not in updated["params"]
    # BN statistics are the target's own (from its forward pass), never averaged.
    np.testing.assert_array_equal(updated["batch_stats"]["projector"]["mean"],
                                  new_bs["projector"]["mean"])
    kept = ema.update_target(target, online, 0.9)
    assert kept["batch_stats"] is target["batch_stats"]
    with pytest.raises(ValueError, match="subtrees"):
        ema.update_target(target, {"backbone": params["backbone"]}, 0.9)


def test_init_target_matches_the_target_network_tree():
    """The target built by build_ssl_net(with_predictor=False) has init_target's tree."""
    from barlow_jax.models import build_ssl_net
    from configs import smoke

    c = smoke.get_config()
    c.predictor.spec = "16-64"
    online = build_ssl_net(c)
    target_net = build_ssl_net(c, with_predictor=False)
    x = jnp.zeros((2, 16, 16, 3), jnp.float32)
    key = jax.random.key(0)
    v_online = jax.eval_shape(online.init, key, x)
    v_target = jax.eval_shape(target_net.init, key, x)
    mapped = jax.eval_shape(ema.init_target, v_online["params"], v_online["batch_stats"])
    shapes = lambda t: jax.tree.map(lambda a: (a.shape, a.dtype), t)
    assert "predictor" in v_online["params"]
    assert shapes(mapped["params"]) == shapes(dict(v_target["params"]))
    assert shapes(mapped["batch_stats"]) == shapes(dict(v_target["batch_stats"]))


# ----------------------------------------------------------------------------
# Adapters (the registry's loss signature).

def _outputs(seed, n=8, d=6, with_p=True):
    out = {"features": rand(seed, (n, 4)), "z": rand(seed + 1, (n, d))}
    if with_p:
        out["p"] = rand(seed + 2, (n, d))
    return out


def test_adapters_equal_the_pure_losses():
    cfg = base.get_config().loss
    cfg.sim_coeff, cfg.std_coeff, cfg.cov_coeff, cfg.temperature = 2.0, 3.0, 4.0, 0.3
    o1, o2, t1, t2 = _outputs(0), _outputs(10), _outputs(20, with_p=False), _outputs(30,
                                                                                    with_p=False)
    checks = {
        vicreg_mod: vicreg_mod.vicreg(o1["z"], o2["z"], sim_coeff=2.0, std_coeff=3.0,
                                      cov_coeff=4.0),
        simclr_mod: simclr_mod.info_nce(o1["z"], o2["z"], temperature=0.3),
        byol_mod: byol_mod.byol(o1["p"], o2["p"], t1["z"], t2["z"]),
        simsiam_mod: simsiam_mod.simsiam(o1["p"], o2["p"], o1["z"], o2["z"]),
    }
    for mod, (want, want_metrics) in checks.items():
        got, metrics = mod.method_loss(o1, o2, t1, t2, cfg, None)
        if mod is simclr_mod:   # the official tf2 scale: mean(loss_a + loss_b) = 2 x info_nce
            want = want * cfg.simclr_loss_scale
        assert float(got) == pytest.approx(float(want), rel=1e-6), mod.__name__
        assert set(metrics) == set(want_metrics)
        assert all(np.ndim(v) == 0 for v in metrics.values())


def test_metric_values():
    o1 = _outputs(0)
    # BYOL: cos_sim is the mean cosine of both directions.
    t1, t2 = _outputs(5, with_p=False), _outputs(6, with_p=False)
    loss, m = byol_mod.byol(o1["p"], o1["p"] * 2.0, t1["z"], t2["z"])
    cos = lambda a, b: np.mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1)
                               / np.linalg.norm(b, axis=1))
    p = np.asarray(o1["p"])
    want = (cos(p, np.asarray(t2["z"])) + cos(p, np.asarray(t1["z"]))) / 2
    assert float(m["cos_sim"]) == pytest.approx(want, rel=1e-5)
    # Perfect predictions: BYOL 0, SimSiam -1.
    z = o1["z"]
    assert float(byol_mod.byol(z, z, z, z)[0]) == pytest.approx(0.0, abs=1e-6)
    loss, m = simsiam_mod.simsiam(z, z, z, z)
    assert float(loss) == pytest.approx(-1.0, abs=1e-6)
    # z_std: ~0 for a collapsed batch, population std of z/|z| otherwise.
    collapsed = jnp.tile(z[:1], (8, 1))
    assert float(simsiam_mod.normalized_std(collapsed)) == pytest.approx(0.0, abs=1e-6)
    h = np.asarray(z) / np.linalg.norm(np.asarray(z), axis=1, keepdims=True)
    assert float(m["z_std"]) == pytest.approx(np.mean(h.std(0)), rel=1e-5)
    # Identical views: VICReg invariance 0; SimCLR accuracy 1 on distinct embeddings.
    assert float(vicreg_mod.vicreg(z, z)[1]["invariance"]) == 0.0
    assert float(simclr_mod.info_nce(z, z)[1]["accuracy"]) == 1.0


def test_adapters_reject_missing_pieces():
    cfg = base.get_config().loss
    with_p, no_p = _outputs(0), _outputs(1, with_p=False)
    tgt = _outputs(2, with_p=False)
    with pytest.raises(ValueError, match="target"):
        byol_mod.method_loss(with_p, with_p, None, None, cfg, None)
    with pytest.raises(ValueError, match="predictor"):
        byol_mod.method_loss(no_p, no_p, tgt, tgt, cfg, None)
    with pytest.raises(ValueError, match="predictor"):
        simsiam_mod.method_loss(no_p, no_p, None, None, cfg, None)
    with pytest.raises(ValueError, match="same shape"):
        vicreg_mod.vicreg(rand(0, (4, 3)), rand(1, (4, 2)))
    with pytest.raises(ValueError, match="temperature"):
        simclr_mod.info_nce(rand(0, (4, 3)), rand(1, (4, 3)), temperature=0.0)
    with pytest.raises(ValueError, match="predictor's last width"):
        byol_mod.byol_loss(rand(0, (4, 3)), rand(1, (4, 5)))


def test_registry_entries():
    """Every method is registered with these flags."""
    from barlow_jax.methods import METHODS

    missing = [m for m in NEW_METHODS if m not in METHODS]
    assert not missing, f"not registered: {missing}"
    for name, (mod, needs_predictor, ema_target) in NEW_METHODS.items():
        entry = METHODS[name]
        assert entry.loss is mod.method_loss
        assert (entry.needs_predictor, entry.ema_target) == (needs_predictor, ema_target)


# ----------------------------------------------------------------------------
# Configs.

def _flat_keys(cfg, prefix=""):
    keys = set()
    for k, v in cfg.items():
        if isinstance(v, ml_collections.ConfigDict):
            keys |= _flat_keys(v, prefix + k + ".")
        else:
            keys.add(prefix + k)
    return keys


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_sets_only_declared_keys(name):
    c = importlib.import_module(f"configs.{name}").get_config()
    c.lock()
    method = name.rsplit("_", 1)[0]
    _, needs_predictor, _ = NEW_METHODS[method]
    assert c.method == method
    assert bool(c.predictor.spec) == needs_predictor
    extra = _flat_keys(c) - _flat_keys(base.get_config())
    assert not extra, f"{name} sets keys base.py does not declare: {sorted(extra)}"
    if name.endswith("cifar10"):
        assert c.data.image_size == 32 and c.model.cifar_stem and c.data.num_classes == 10
        # solo-learn's symmetric.yaml (SimCLR) and symmetric_weak.yaml (SimSiam) keep blur
        # p 0.5 at 32 px; the others turn it off.
        if name not in ("simclr_cifar10", "simsiam_cifar10"):
            assert c.data.augment.view1.blur_prob == 0.0 == c.data.augment.view2.blur_prob


def test_published_imagenet_settings():
    get = lambda n: importlib.import_module(f"configs.{n}").get_config()
    v = get("vicreg_in1k")
    assert (v.projector.spec, v.projector.hidden_bias, v.projector.last_bias) == (
        "8192-8192-8192", True, False)
    assert (v.batch_size, v.optimizer.lr_weights, v.optimizer.weight_decay) == (2048, 0.2, 1e-6)
    s = get("simclr_in1k")
    assert (s.batch_size, s.loss.temperature, s.optimizer.lr_weights) == (4096, 0.1, 0.3)
    for view in (s.data.augment.view1, s.data.augment.view2):
        assert (view.brightness, view.contrast, view.saturation, view.hue) == (0.8, 0.8, 0.8, 0.2)
        assert (view.jitter_prob, view.blur_prob, view.solarize_prob) == (0.8, 0.5, 0.0)
    b = get("byol_in1k")
    assert (b.projector.spec, b.predictor.spec) == ("4096-256", "4096-256")
    assert (b.loss.ema_start, b.loss.ema_end, b.optimizer.weight_decay) == (0.996, 1.0, 1.5e-6)
    assert (b.data.augment.view1.blur_prob, b.data.augment.view2.solarize_prob) == (1.0, 0.2)
    m = get("simsiam_in1k")
    assert (m.projector.spec, m.predictor.spec, m.optimizer.name) == (
        "2048-2048-2048", "512-2048", "sgd")
    assert (m.batch_size, m.num_epochs, m.optimizer.lr_weights, m.optimizer.weight_decay) == (
        512, 100, 0.05, 1e-4)
