"""Method losses against NumPy ports of the official formulas, and 1 vs 8 devices.

The NumPy references below are written from the reference code of each
method (not from the JAX modules): facebookresearch/vicreg main_vicreg.py,
google-research/simclr objective.py, deepmind-research byol_experiment.py,
facebookresearch/simsiam main_simsiam.py. Gradients are checked against
central finite differences of those references in float64.
"""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from barlow_jax.methods import barlow_twins as bt_mod
from barlow_jax.methods import byol as byol_mod
from barlow_jax.methods import simclr as simclr_mod
from barlow_jax.methods import simsiam as simsiam_mod
from barlow_jax.methods import vicreg as vicreg_mod
from barlow_jax.methods.byol import byol, byol_loss
from barlow_jax.methods.simclr import info_nce
from barlow_jax.methods.simsiam import simsiam
from barlow_jax.methods.vicreg import vicreg

N_DEV = 8


# ----------------------------------------------------------------------------
# NumPy references (float64), ported from the official code.

def np_off_diagonal(x):
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].reshape(n - 1, n + 1)[:, 1:].flatten()


def np_vicreg(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
    """main_vicreg.py VICReg.forward on one process (the gathered batch)."""
    batch_size, num_features = x.shape
    repr_loss = np.mean((x - y) ** 2)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    std_x = np.sqrt(x.var(axis=0, ddof=1) + 0.0001)
    std_y = np.sqrt(y.var(axis=0, ddof=1) + 0.0001)
    std_loss = np.mean(np.maximum(1 - std_x, 0)) / 2 + np.mean(np.maximum(1 - std_y, 0)) / 2
    cov_x = (x.T @ x) / (batch_size - 1)
    cov_y = (y.T @ y) / (batch_size - 1)
    cov_loss = ((np_off_diagonal(cov_x) ** 2).sum() / num_features
                + (np_off_diagonal(cov_y) ** 2).sum() / num_features)
    loss = sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss
    return loss, dict(invariance=repr_loss, variance=std_loss, covariance=cov_loss)


def np_softmax_ce(labels, logits):
    m = logits.max(axis=1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    return -(labels * logp).sum(axis=1)


def np_simclr_official(hidden1, hidden2, temperature):
    """objective.py add_contrastive_loss, one replica: returns (loss_a + loss_b, acc)."""
    large_num = 1e9
    norm = lambda h: h / np.sqrt(np.maximum((h * h).sum(-1, keepdims=True), 1e-12))
    hidden1, hidden2 = norm(hidden1), norm(hidden2)
    batch_size = hidden1.shape[0]
    labels = np.eye(batch_size, batch_size * 2)
    masks = np.eye(batch_size)
    logits_aa = hidden1 @ hidden1.T / temperature - masks * large_num
    logits_bb = hidden2 @ hidden2.T / temperature - masks * large_num
    logits_ab = hidden1 @ hidden2.T / temperature
    logits_ba = hidden2 @ hidden1.T / temperature
    cat_a = np.concatenate([logits_ab, logits_aa], 1)
    cat_b = np.concatenate([logits_ba, logits_bb], 1)
    loss_a = np_softmax_ce(labels, cat_a).mean()
    loss_b = np_softmax_ce(labels, cat_b).mean()
    # Top-1 over all 2N - 1 candidates (the positive is column i of each).
    hits = np.concatenate([cat_a.argmax(1), cat_b.argmax(1)]) == np.tile(np.arange(batch_size), 2)
    return loss_a + loss_b, hits.mean()


def np_byol(p1, p2, zt1, zt2):
    """byol_experiment.py: mean over the batch of regression_loss in both directions."""
    norm = lambda x: x * (1.0 / np.sqrt(np.maximum((x ** 2).sum(-1, keepdims=True), 1e-12)))
    reg = lambda x, y: ((norm(x) - norm(y)) ** 2).sum(-1)
    return np.mean(reg(p1, zt2) + reg(p2, zt1))


def np_cosine_similarity(x1, x2, eps=1e-8):
    """torch.nn.CosineSimilarity(dim=1)."""
    n1 = np.linalg.norm(x1, axis=1)
    n2 = np.linalg.norm(x2, axis=1)
    return (x1 * x2).sum(1) / np.maximum(n1 * n2, eps)


def np_simsiam(p1, p2, z1, z2):
    """main_simsiam.py: -(criterion(p1, z2).mean() + criterion(p2, z1).mean()) * 0.5."""
    return -(np_cosine_similarity(p1, z2).mean() + np_cosine_similarity(p2, z1).mean()) * 0.5


def finite_diff_grad(f, arrays, argnum, h=1e-6):
    """Central differences of scalar f(*arrays) w.r.t. arrays[argnum], float64."""
    arrays = [np.array(a, np.float64) for a in arrays]
    x = arrays[argnum]
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        fp = f(*arrays)
        x[idx] = old - h
        fm = f(*arrays)
        x[idx] = old
        g[idx] = (fp - fm) / (2 * h)
    return g


def assert_close(actual, expected, rtol=1e-4, atol_scale=None, err_msg=""):
    """allclose with an absolute tolerance relative to the largest |expected|."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = np.max(np.abs(expected)) if expected.size else 0.0
    atol = (atol_scale if atol_scale is not None else rtol) * max(scale, 1e-12)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=err_msg)


def rand(seed, shape, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# ----------------------------------------------------------------------------
# Values and gradients against the NumPy references.

def vicreg_inputs():
    # Per-feature scales keep every std clearly on one side of 1 (the hinge),
    # so finite differences never straddle the kink; some features on each side.
    scales = np.array([0.3, 0.5, 0.7, 1.8, 2.5], np.float32)
    z1 = rand(0, (10, 5)) * scales + 0.2
    z2 = 0.6 * z1 + 0.5 * rand(1, (10, 5)) * scales
    for z in (z1, z2):
        std = np.sqrt(z.astype(np.float64).var(0, ddof=1) + 1e-4)
        assert np.all(np.abs(std - 1) > 0.05), std
        assert np.any(std < 1) and np.any(std > 1)
    return z1, z2


def test_vicreg_value_and_terms_match_official():
    z1, z2 = vicreg_inputs()
    loss, metrics = vicreg(jnp.asarray(z1), jnp.asarray(z2))
    ref, ref_terms = np_vicreg(z1.astype(np.float64), z2.astype(np.float64))
    assert_close(loss, ref, rtol=1e-5)
    for k in ("invariance", "variance", "covariance"):
        assert_close(metrics[k], ref_terms[k], rtol=1e-5, err_msg=k)
    # Other coefficients reach the right terms.
    loss2, _ = vicreg(jnp.asarray(z1), jnp.asarray(z2), sim_coeff=1.0, std_coeff=2.0,
                      cov_coeff=3.0)
    assert_close(loss2, np_vicreg(z1.astype(np.float64), z2.astype(np.float64), 1.0, 2.0,
                                  3.0)[0], rtol=1e-5)


def test_vicreg_gradient_matches_finite_differences():
    z1, z2 = vicreg_inputs()
    g1, g2 = jax.grad(lambda a, b: vicreg(a, b)[0], argnums=(0, 1))(jnp.asarray(z1),
                                                                   jnp.asarray(z2))
    f = lambda a, b: np_vicreg(a, b)[0]
    assert_close(g1, finite_diff_grad(f, (z1, z2), 0), rtol=1e-3, atol_scale=1e-4)
    assert_close(g2, finite_diff_grad(f, (z1, z2), 1), rtol=1e-3, atol_scale=1e-4)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_info_nce_value_and_accuracy_match_official(temperature):
    z1 = rand(2, (12, 6))
    z2 = z1 + 0.7 * rand(3, (12, 6))
    loss, metrics = info_nce(jnp.asarray(z1), jnp.asarray(z2), temperature=temperature)
    ref, acc = np_simclr_official(z1.astype(np.float64), z2.astype(np.float64), temperature)
    # The official loss is loss_a + loss_b; ours is the mean over all 2N anchors.
    assert_close(loss, ref / 2, rtol=1e-5)
    assert_close(metrics["accuracy"], acc, rtol=1e-6)
    assert 0.0 < float(metrics["accuracy"]) < 1.0   # a test that can see a wrong index


def test_info_nce_gradient_matches_finite_differences():
    z1 = rand(4, (6, 4))
    z2 = z1 + 0.5 * rand(5, (6, 4))
    g1, g2 = jax.grad(lambda a, b: info_nce(a, b, temperature=0.2)[0], argnums=(0, 1))(
        jnp.asarray(z1), jnp.asarray(z2))
    f = lambda a, b: np_simclr_official(a, b, 0.2)[0] / 2
    assert_close(g1, finite_diff_grad(f, (z1, z2), 0), rtol=1e-3, atol_scale=1e-4)
    assert_close(g2, finite_diff_grad(f, (z1, z2), 1), rtol=1e-3, atol_scale=1e-4)


def test_info_nce_bfloat16_inputs_stay_finite_and_close():
    z1 = rand(6, (64, 128))
    z2 = z1 + 0.5 * rand(7, (64, 128))
    f = lambda a, b: info_nce(a, b, temperature=0.1)
    loss32, m32 = f(jnp.asarray(z1), jnp.asarray(z2))
    (loss16, m16), (g1, g2) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(
        jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16))
    assert loss16.dtype == jnp.float32
    assert np.isfinite(float(loss16))
    assert np.all(np.isfinite(np.asarray(g1, np.float32)))
    assert np.all(np.isfinite(np.asarray(g2, np.float32)))
    # bf16 rounding of the inputs (8 mantissa bits) moves the loss only slightly.
    assert abs(float(loss16) - float(loss32)) < 2e-2 * float(loss32)
    assert abs(float(m16["accuracy"]) - float(m32["accuracy"])) <= 2.0 / 128


def test_info_nce_small_temperature_is_finite():
    z = rand(8, (16, 8))
    loss, _ = info_nce(jnp.asarray(z), jnp.asarray(z), temperature=0.01)
    g = jax.grad(lambda a: info_nce(a, jnp.asarray(z), temperature=0.01)[0])(jnp.asarray(z))
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(g)))


def byol_inputs(seed, n=8, d=5):
    p1, p2, zt1, zt2 = (rand(seed + i, (n, d)) for i in range(4))
    return p1, p2, zt1, zt2


def test_byol_value_and_gradient_match_official():
    p1, p2, zt1, zt2 = byol_inputs(10)
    fn = lambda a, b, c, d: byol(a, b, c, d)[0]
    loss = fn(*map(jnp.asarray, (p1, p2, zt1, zt2)))
    as64 = [x.astype(np.float64) for x in (p1, p2, zt1, zt2)]
    assert_close(loss, np_byol(*as64), rtol=1e-5)
    # One direction alone is 2 - 2 cos, the mean over the batch.
    cos = np_cosine_similarity(as64[0], as64[3])
    assert_close(byol_loss(jnp.asarray(p1), jnp.asarray(zt2)), np.mean(2 - 2 * cos), rtol=1e-5)
    grads = jax.grad(fn, argnums=(0, 1, 2, 3))(*map(jnp.asarray, (p1, p2, zt1, zt2)))
    for i in (0, 1):
        assert_close(grads[i], finite_diff_grad(np_byol, as64, i), rtol=1e-3, atol_scale=1e-4)
    # The targets receive no gradient (stop-gradient), although the reference has one.
    for i in (2, 3):
        assert np.all(np.asarray(grads[i]) == 0)


def test_simsiam_value_and_gradient_match_official():
    p1, p2, z1, z2 = byol_inputs(20)
    fn = lambda a, b, c, d: simsiam(a, b, c, d)[0]
    args = list(map(jnp.asarray, (p1, p2, z1, z2)))
    as64 = [x.astype(np.float64) for x in (p1, p2, z1, z2)]
    assert_close(fn(*args), np_simsiam(*as64), rtol=1e-5)
    grads = jax.grad(fn, argnums=(0, 1, 2, 3))(*args)
    for i in (0, 1):
        assert_close(grads[i], finite_diff_grad(np_simsiam, as64, i), rtol=1e-3,
                     atol_scale=1e-4)
    for i in (2, 3):
        assert np.all(np.asarray(grads[i]) == 0)


# ----------------------------------------------------------------------------
# 1 device vs 8 devices under jax.shard_map (check_vma=True, the default).

# The loss fields of barlow_jax/defaults.py (a plain namespace keeps this file free of
# ml_collections, which accelerator images may lack).
LOSS_CONFIG = types.SimpleNamespace(lambd=0.0051, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0,
                                    temperature=0.1)


def _adapter_outputs(params, x, target_params):
    """A tiny linear 'network': z = x W + b, p = z V; target z from fixed weights."""
    z = x @ params["w"] + params["b"]
    out = {"features": x, "z": z, "p": z @ params["v"]}
    tgt = {"z": jax.lax.stop_gradient(x @ target_params["w"] + target_params["b"])}
    return out, tgt


METHOD_LOSSES = {
    "barlow_twins": bt_mod.method_loss,
    "vicreg": vicreg_mod.method_loss,
    "simclr": simclr_mod.method_loss,
    "byol": byol_mod.method_loss,
    "simsiam": simsiam_mod.method_loss,
}

PURE_LOSSES = {
    "barlow_twins": lambda z1, z2, ax: bt_mod.barlow_twins(z1, z2, axis_name=ax),
    "vicreg": lambda z1, z2, ax: vicreg(z1, z2, axis_name=ax),
    "simclr": lambda z1, z2, ax: info_nce(z1, z2, temperature=0.2, axis_name=ax),
    # For the predictor methods, z1/z2 play the predictions and fixed arrays the targets.
    "byol": lambda z1, z2, ax: byol(z1, z2, z2 * 0.5 + 1.0, z1 * 0.3 - 0.2, axis_name=ax),
    "simsiam": lambda z1, z2, ax: simsiam(z1, z2, z2 * 0.5 + 1.0, z1 - 0.2, axis_name=ax),
}


@pytest.fixture(scope="module")
def mesh():
    devices = jax.devices()
    assert len(devices) >= N_DEV, "tests/conftest.py should provide 8 fake CPU devices"
    return Mesh(np.array(devices[:N_DEV]), ("data",))


def _linear_problem(seed, n=32, d_in=6, d=8):
    rng = np.random.default_rng(seed)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
    params = {"w": f32(d_in, d) * 0.5, "b": f32(d) * 0.1, "v": f32(d, d) * 0.4}
    target = {"w": f32(d_in, d) * 0.5, "b": f32(d) * 0.1}
    x1 = f32(n, d_in)
    x2 = x1 + 0.5 * f32(n, d_in)
    return params, target, x1, x2


@pytest.mark.parametrize("name", sorted(METHOD_LOSSES))
def test_method_one_vs_eight_devices_params_and_inputs(mesh, name):
    """Loss, metrics and gradients w.r.t. replicated params and sharded inputs."""
    params, target, x1, x2 = _linear_problem(seed=sum(map(ord, name)))
    method_loss = METHOD_LOSSES[name]

    def loss_fn(params, x1, x2, axis_name):
        out1, tgt1 = _adapter_outputs(params, x1, target)
        out2, tgt2 = _adapter_outputs(params, x2, target)
        return method_loss(out1, out2, tgt1, tgt2, LOSS_CONFIG, axis_name)

    grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)
    (loss1, metrics1), grads1 = jax.jit(functools.partial(grad_fn, axis_name=None))(
        params, x1, x2)

    def body(params, x1, x2):
        return grad_fn(params, x1, x2, "data")

    mapped = jax.jit(jax.shard_map(
        body, mesh=mesh, in_specs=(P(), P("data"), P("data")),
        out_specs=((P(), P()), (P(), P("data"), P("data")))))
    (loss8, metrics8), grads8 = mapped(params, x1, x2)

    assert np.isfinite(float(loss1))
    assert_close(loss8, loss1, rtol=2e-5, err_msg=f"{name} loss")
    for k in metrics1:
        assert_close(metrics8[k], metrics1[k], rtol=2e-5, atol_scale=1e-5, err_msg=f"{name} {k}")
    gp1, gx1_1, gx2_1 = grads1
    gp8, gx1_8, gx2_8 = grads8
    # b cancels in the batch-centred losses (BT, VICReg); v is used only by the predictor ones.
    assert np.any(np.asarray(gp1["w"]) != 0), f"{name}: zero gradient for w"
    if name in ("byol", "simsiam"):
        assert np.any(np.asarray(gp1["v"]) != 0), f"{name}: zero gradient for v"
    # Replicated params: check_vma already summed the per-device pieces. The
    # tolerance is relative to the largest gradient entry of any parameter.
    flat = lambda g: np.concatenate([np.ravel(np.asarray(g[k])) for k in sorted(g)])
    assert_close(flat(gp8), flat(gp1), rtol=1e-4, err_msg=f"{name} d/dparams")
    assert_close(gx1_8, gx1_1, rtol=1e-4, err_msg=f"{name} d/dx1")
    assert_close(gx2_8, gx2_1, rtol=1e-4, err_msg=f"{name} d/dx2")


@pytest.mark.parametrize("name", sorted(PURE_LOSSES))
def test_pure_loss_one_vs_eight_devices_embeddings(mesh, name):
    """The pure loss: value and gradient w.r.t. sharded z1/z2 equal the full-batch ones."""
    fn = PURE_LOSSES[name]
    z1 = rand(30, (40, 16))
    z2 = 0.8 * z1 + 0.6 * rand(31, (40, 16))
    grad_fn = jax.value_and_grad(lambda a, b, ax: fn(a, b, ax)[0], argnums=(0, 1))
    loss1, (g1_1, g2_1) = jax.jit(functools.partial(grad_fn, ax=None))(z1, z2)
    mapped = jax.jit(jax.shard_map(
        lambda a, b: grad_fn(a, b, "data"), mesh=mesh, in_specs=(P("data"), P("data")),
        out_specs=(P(), (P("data"), P("data")))))
    loss8, (g1_8, g2_8) = mapped(z1, z2)
    assert_close(loss8, loss1, rtol=2e-5, err_msg=f"{name} loss")
    assert np.any(np.asarray(g1_1) != 0) and np.any(np.asarray(g2_1) != 0)
    assert_close(g1_8, g1_1, rtol=1e-4, err_msg=f"{name} d/dz1")
    assert_close(g2_8, g2_1, rtol=1e-4, err_msg=f"{name} d/dz2")


def test_info_nce_eight_devices_matches_official_global_batch(mesh):
    """Under shard_map the negatives span all devices: equal to the one-replica official loss."""
    z1 = rand(40, (32, 8))
    z2 = z1 + 0.8 * rand(41, (32, 8))
    mapped = jax.jit(jax.shard_map(
        lambda a, b: info_nce(a, b, temperature=0.1, axis_name="data"), mesh=mesh,
        in_specs=(P("data"), P("data")), out_specs=(P(), P())))
    loss8, m8 = mapped(z1, z2)
    ref, acc = np_simclr_official(z1.astype(np.float64), z2.astype(np.float64), 0.1)
    assert_close(loss8, ref / 2, rtol=1e-5)
    assert_close(m8["accuracy"], acc, rtol=1e-6)
