"""optimizer.reference_world_size: the official Barlow Twins W-GPU dynamics on 8 fake devices.

The reference is a torch simulation of facebookresearch/barlowtwins main.py on
W ranks in one process: SyncBN-style global statistics (inside autograd), each
rank's C summed with the other ranks' C detached (``torch.distributed.all_reduce``
is outside autograd), the per-rank losses backpropagated, the gradients
averaged as DDP does, then the official ``LARS.step`` (two parameter groups).
barlow_jax runs the same problem under ``jax.shard_map`` over 8 devices with
``build_optimizer`` and must land on the same parameters after N steps.
"""


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from jax.sharding import NamedSharding, PartitionSpec as P

from barlow_jax.methods.barlow_twins import barlow_twins
from barlow_jax.optim import build_optimizer, gradient_scale

LAMBD = 0.0051
N, D_IN, D = 32, 6, 5          # global batch, input width, embedding width
STEPS, STEPS_PER_EPOCH = 6, 2


def problem(seed=0):
    rng = np.random.default_rng(seed)
    params = {"w": rng.standard_normal((D_IN, D)).astype(np.float32) * 0.5,
              "b": rng.standard_normal((D,)).astype(np.float32) * 0.1,
              "v": rng.standard_normal((D, D)).astype(np.float32) * 0.5}
    xs = [rng.standard_normal((2, N, D_IN)).astype(np.float32) for _ in range(STEPS)]
    for x in xs:
        x[1] = x[0] + 0.5 * x[1]
    return params, xs


def opt_config(world):
    return ml_collections.ConfigDict(dict(
        name="lars", lr_weights=0.2, lr_biases=0.0048, scale_lr_by_batch=True,
        weight_decay=1.5e-6, momentum=0.9, eta=0.001, warmup_epochs=1.0,
        final_lr_fraction=0.001, fix_predictor_lr=False, reference_world_size=world,
        grad_scale=1.0))


def official_run(params, xs, world, schedules):
    """W-rank torch simulation of main.py (float64)."""
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    mu = {k: torch.zeros_like(v) for k, v in p.items()}
    for t, x in enumerate(xs):
        x1, x2 = (torch.tensor(v, dtype=torch.float64) for v in x)
        z1 = torch.tanh(x1 @ p["w"] + p["b"]) @ p["v"]
        z2 = torch.tanh(x2 @ p["w"] + p["b"]) @ p["v"]

        def bn(z):   # SyncBatchNorm1d(affine=False), training mode: global batch statistics
            m = z.mean(0)
            return (z - m) / torch.sqrt(((z - m) ** 2).mean(0) + 1e-5)

        z1n, z2n = bn(z1), bn(z2)
        local = N // world
        cs = [z1n[r * local:(r + 1) * local].T @ z2n[r * local:(r + 1) * local] / N
              for r in range(world)]
        total = 0.0
        for r in range(world):   # rank r: its own C plus the all_reduced rest, no grad
            c = cs[r] + sum(cs[s].detach() for s in range(world) if s != r)
            on = (torch.diagonal(c) - 1).pow(2).sum()
            off = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
            total = total + on + LAMBD * off
        keys = sorted(p)
        grads = dict(zip(keys, torch.autograd.grad(total, [p[k] for k in keys])))
        grads = {k: g / world for k, g in grads.items()}     # DDP averages
        lr_w, lr_b = float(schedules["lr"](t)), float(schedules["lr_biases"](t))
        with torch.no_grad():   # LARS.step of main.py
            for k in keys:
                dp = grads[k]
                if p[k].ndim != 1:
                    dp = dp + 1.5e-6 * p[k]
                    pn, un = torch.norm(p[k]), torch.norm(dp)
                    q = 0.001 * pn / un if (pn > 0 and un > 0) else 1.0
                    dp = dp * q
                mu[k] = 0.9 * mu[k] + dp
                p[k] -= (lr_w if p[k].ndim != 1 else lr_b) * mu[k]
    return {k: v.detach().numpy() for k, v in p.items()}


def jax_run(params, xs, world, mesh):
    tx, schedules = build_optimizer(opt_config(world), batch_size=N,
                                    steps_per_epoch=STEPS_PER_EPOCH, total_steps=STEPS)

    def loss_fn(prm, x):
        z1 = jnp.tanh(x[0] @ prm["w"] + prm["b"]) @ prm["v"]
        z2 = jnp.tanh(x[1] @ prm["w"] + prm["b"]) @ prm["v"]
        return barlow_twins(z1, z2, lambd=LAMBD, axis_name="data")[0]

    grad = jax.jit(jax.shard_map(jax.grad(loss_fn), mesh=mesh, in_specs=(P(), P(None, "data")),
                                 out_specs=P()))

    @jax.jit
    def update(prm, state, g):
        u, state = tx.update(g, state, prm)
        return jax.tree.map(jnp.add, prm, u), state

    prm = jax.tree.map(jnp.asarray, params)
    state = tx.init(prm)
    for x in xs:
        xb = jax.device_put(x, NamedSharding(mesh, P(None, "data")))
        prm, state = update(prm, state, grad(prm, xb))
    return {k: np.asarray(v) for k, v in prm.items()}, schedules


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


@pytest.mark.parametrize("world", [1, 4, 32])
def test_reference_world_size_reproduces_the_official_w_rank_run(mesh, world):
    params, xs = problem()
    got, schedules = jax_run(params, xs, world if world > 1 else 0, mesh)
    want = official_run(params, xs, world if N % world == 0 else 1, schedules)
    for k in want:
        moved = np.abs(want[k] - params[k]).max()
        assert moved > 0, k
        # displacements agree to 0.1% (+ float32 rounding of the parameter values)
        np.testing.assert_allclose(got[k] - params[k], want[k] - params[k], rtol=0,
                                   atol=1e-3 * moved + 3e-8, err_msg=k)


def test_true_gradient_differs_from_the_official_multi_gpu_run(mesh):
    """reference_world_size=0 on the W=4 problem must not match (the test can fail)."""
    params, xs = problem()
    got, schedules = jax_run(params, xs, 0, mesh)
    want = official_run(params, xs, 4, schedules)
    assert np.abs(got["b"] - want["b"]).max() > 0.1 * np.abs(want["b"] - params["b"]).max()


def test_gradient_scale_values_and_bad_input():
    cfg = opt_config(32)
    assert gradient_scale(cfg) == pytest.approx(1 / 32)
    cfg.grad_scale = 0.1
    assert gradient_scale(cfg) == pytest.approx(0.1 / 32)
    cfg.reference_world_size = -1
    with pytest.raises(ValueError, match="reference_world_size"):
        gradient_scale(cfg)
