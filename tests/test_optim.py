"""bt_lars and the schedule against a NumPy port of the official main.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from barlow_jax.optim import bt_lars, bt_schedule, build_optimizer


def official_lr(step, *, batch_size, epochs, steps_per_epoch, warmup_epochs=10):
    """adjust_learning_rate of facebookresearch/barlowtwins main.py (base multiplier)."""
    max_steps = epochs * steps_per_epoch
    warmup_steps = warmup_epochs * steps_per_epoch
    base_lr = batch_size / 256
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    step -= warmup_steps
    max_steps -= warmup_steps
    q = 0.5 * (1 + math.cos(math.pi * step / max_steps))
    end_lr = base_lr * 0.001
    return base_lr * q + end_lr * (1 - q)


class OfficialLARS:
    """LARS.step of main.py in NumPy (float64), two param groups as in the paper."""

    def __init__(self, params, weight_decay, momentum=0.9, eta=0.001):
        self.wd, self.momentum, self.eta = weight_decay, momentum, eta
        self.mu = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, params, grads, lr_weights, lr_biases):
        out = {}
        for k, p in params.items():
            dp = grads[k]
            is_bias = p.ndim == 1  # exclude_bias_and_norm
            lr = lr_biases if is_bias else lr_weights
            if not is_bias:
                dp = dp + self.wd * p
                param_norm = np.linalg.norm(p)
                update_norm = np.linalg.norm(dp)
                q = self.eta * param_norm / update_norm if (param_norm > 0 and update_norm > 0) else 1.0
                dp = dp * q
            self.mu[k] = self.mu[k] * self.momentum + dp
            out[k] = p - lr * self.mu[k]
        return out


def test_schedule_matches_official():
    spe, epochs, batch = 7, 20, 512
    sched = bt_schedule(0.2 * batch / 256, total_steps=epochs * spe, warmup_steps=10 * spe)
    for t in [0, 1, 5, 69, 70, 71, 100, 139]:
        ref = 0.2 * official_lr(t, batch_size=batch, epochs=epochs, steps_per_epoch=spe)
        np.testing.assert_allclose(float(sched(t)), ref, rtol=1e-5, atol=1e-9)
    assert float(sched(0)) == 0.0  # the first update uses lr 0


def test_bt_lars_matches_official_over_warmup_and_cosine():
    rng = np.random.default_rng(0)
    params = {"conv": rng.normal(size=(3, 3, 4, 8)), "dense": rng.normal(size=(8, 5)),
              "bias": rng.normal(size=(5,)), "bn_scale": rng.normal(size=(8,)),
              "zero_w": np.zeros((4, 4))}  # |p| = 0 -> trust ratio 1
    spe, epochs, batch, wd = 3, 12, 1024, 1.5e-6
    total, warm = spe * epochs, 10 * spe
    sw = bt_schedule(0.2 * batch / 256, total_steps=total, warmup_steps=warm)
    sb = bt_schedule(0.0048 * batch / 256, total_steps=total, warmup_steps=warm)
    tx = bt_lars(sw, sb, weight_decay=wd)
    jparams = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    state = tx.init(jparams)
    ref = OfficialLARS(params, wd)
    np_params = dict(params)
    update = jax.jit(tx.update)
    for t in range(total):
        grads = {k: rng.normal(size=v.shape) * (0.1 + t % 3) for k, v in params.items()}
        lr = official_lr(t, batch_size=batch, epochs=epochs, steps_per_epoch=spe)
        np_params = ref.step(np_params, grads, 0.2 * lr, 0.0048 * lr)
        upd, state = update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), grads), state,
                            jparams)
        jparams = optax.apply_updates(jparams, upd)
        for k in params:
            np.testing.assert_allclose(np.asarray(jparams[k]), np_params[k], rtol=2e-5,
                                       atol=2e-6, err_msg=f"{k} at update {t}")
    assert int(state.count) == total
    # biases really moved with their own (smaller) rate and weights with LARS
    assert not np.allclose(np_params["bias"], params["bias"])


def test_lr_after_momentum_differs_from_optax_lars():
    """optax.lars scales before momentum: under warmup the two disagree (FIELD_NOTES §2)."""
    p = {"w": jnp.ones((4, 4))}
    g = {"w": jnp.full((4, 4), 0.5)}
    sched = lambda c: 0.1 * (c + 1.0)
    ours, theirs = bt_lars(sched, sched, weight_decay=0.0), optax.lars(sched, weight_decay=0.0,
                                                                       trust_coefficient=0.001)
    s1, s2 = ours.init(p), theirs.init(p)
    for _ in range(3):
        u1, s1 = ours.update(g, s1, p)
        u2, s2 = theirs.update(g, s2, p)
    assert not np.allclose(u1["w"], u2["w"], rtol=1e-3)


def test_build_optimizer_scales_by_batch_and_rejects_unknown():
    import ml_collections
    from configs import base
    cfg = base.get_config().optimizer
    tx, scheds = build_optimizer(cfg, batch_size=2048, steps_per_epoch=10, total_steps=1000)
    np.testing.assert_allclose(float(scheds["lr"](100)), 0.2 * 8, rtol=1e-6)   # end of warmup
    np.testing.assert_allclose(float(scheds["lr_biases"](100)), 0.0048 * 8, rtol=1e-6)
    np.testing.assert_allclose(float(scheds["lr"](1000)), 0.2 * 8 * 0.001, rtol=1e-4)
    bad = ml_collections.ConfigDict(cfg.to_dict())
    bad.name = "adamw"
    with pytest.raises(ValueError, match="config.optimizer.name"):
        build_optimizer(bad, batch_size=256, steps_per_epoch=1, total_steps=1)
