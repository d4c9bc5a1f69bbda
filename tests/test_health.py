"""Embedding health: std and effective rank against NumPy; 1 vs 8 devices; warnings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from barlow_jax.health import collapse_warnings, embedding_health
from barlow_jax.methods import get_method


def numpy_erank(z):
    s = np.linalg.svd(z - z.mean(0), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def with_singular_values(n, d, sigma, seed=0):
    """z [n, d] whose centred version has exactly the singular values ``sigma``."""
    rng = np.random.default_rng(seed)
    r = len(sigma)
    u = rng.normal(size=(n, r))
    u -= u.mean(0)
    u, _ = np.linalg.qr(u)
    v, _ = np.linalg.qr(rng.normal(size=(d, r)))
    return (u * sigma) @ v.T + rng.normal(size=(1, d)) * 3.0


def test_std_of_known_data():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(64, 12)) * np.linspace(0.1, 2.0, 12) + 5.0
    out = embedding_health(jnp.asarray(z, jnp.float32), effective_rank=False)
    std = z.std(axis=0)
    assert set(out) == {"embed_std_min", "embed_std_mean"}
    np.testing.assert_allclose(out["embed_std_min"], std.min(), rtol=1e-5)
    np.testing.assert_allclose(out["embed_std_mean"], std.mean(), rtol=1e-5)


@pytest.mark.parametrize("sigma,expected", [
    (np.ones(5), 5.0),                                  # equal singular values: rank 5
    (np.array([1.0]), 1.0),                             # rank one
    (np.geomspace(1.0, 0.05, 20), None),                # a decaying spectrum
])
def test_effective_rank_of_known_matrix(sigma, expected):
    z = with_singular_values(64, 48, sigma)
    out = embedding_health(jnp.asarray(z, jnp.float32))
    p = sigma / sigma.sum()
    formula = float(np.exp(-np.sum(p * np.log(p))))
    if expected is not None:
        assert formula == pytest.approx(expected)
    assert numpy_erank(z) == pytest.approx(formula, rel=1e-6)
    np.testing.assert_allclose(out["embed_eff_rank"], formula, rtol=1e-3)
    np.testing.assert_allclose(out["embed_rank_frac"], formula / 48, rtol=1e-3)


def test_constant_embeddings_have_rank_zero_and_warn():
    z = jnp.ones((16, 8)) * 3.0
    out = {k: float(v) for k, v in embedding_health(z).items()}
    assert out["embed_std_mean"] == 0.0 and out["embed_eff_rank"] == 0.0
    warnings = collapse_warnings(out)
    assert any("complete collapse" in w for w in warnings)
    assert any("dimensional collapse" in w for w in warnings)


def test_one_vs_eight_devices():
    z = np.random.default_rng(3).normal(size=(64, 24)).astype(np.float32) * 2.0 + 1.0
    single = embedding_health(jnp.asarray(z))
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    fn = jax.jit(jax.shard_map(lambda x: embedding_health(x, axis_name="data"), mesh=mesh,
                               in_specs=P("data"), out_specs=P()))
    sharded = fn(jnp.asarray(z))
    assert set(single) == set(sharded)
    for key in single:
        np.testing.assert_allclose(sharded[key], single[key], rtol=1e-5, err_msg=key)


def test_traced_switch_under_shard_map():
    """effective_rank as a traced bool (e.g. "this step is logged") inside the mapped step."""
    z = np.random.default_rng(5).normal(size=(64, 16)).astype(np.float32)
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    fn = jax.jit(jax.shard_map(
        lambda x, step: embedding_health(x, axis_name="data", effective_rank=step % 2 == 0),
        mesh=mesh, in_specs=(P("data"), P()), out_specs=P()))
    on, off = fn(jnp.asarray(z), jnp.int32(4)), fn(jnp.asarray(z), jnp.int32(5))
    np.testing.assert_allclose(on["embed_eff_rank"], numpy_erank(z), rtol=1e-3)
    assert float(off["embed_eff_rank"]) == -1.0
    np.testing.assert_allclose(off["embed_std_min"], z.std(0).min(), rtol=1e-5)


def test_traced_switch_skips_rank():
    z = jnp.asarray(np.random.default_rng(4).normal(size=(32, 8)), jnp.float32)
    fn = jax.jit(lambda z, on: embedding_health(z, effective_rank=on))
    off, on = fn(z, jnp.bool_(False)), fn(z, jnp.bool_(True))
    assert float(off["embed_eff_rank"]) == -1.0 and float(off["embed_rank_frac"]) == -1.0
    np.testing.assert_allclose(on["embed_eff_rank"], numpy_erank(np.asarray(z)), rtol=1e-3)
    assert float(off["embed_std_mean"]) == pytest.approx(float(on["embed_std_mean"]))


def test_warnings():
    healthy = {"loss": 10.0, "embed_std_min": 0.5, "embed_std_mean": 1.0,
               "embed_eff_rank": 20.0, "embed_rank_frac": 0.6, "mean_abs_off_diag": 0.05}
    assert collapse_warnings(healthy) == []
    assert collapse_warnings(dict(healthy, embed_eff_rank=-1.0, embed_rank_frac=-1.0)) == []
    dead = collapse_warnings(dict(healthy, embed_std_min=1e-5))
    assert len(dead) == 1 and "dead" in dead[0]
    low_rank = collapse_warnings(dict(healthy, embed_eff_rank=1.2, embed_rank_frac=0.04))
    assert len(low_rank) == 1 and "dimensional collapse" in low_rank[0]
    bt = get_method("barlow_twins")
    assert collapse_warnings(dict(healthy, mean_abs_off_diag=0.9)) == []  # a method's own rule
    assert "correlated" in collapse_warnings(dict(healthy, mean_abs_off_diag=0.9), bt)[0]
    assert "diverged" in collapse_warnings(dict(healthy, on_diag=float("inf")), bt)[0]
    assert "diverged" in collapse_warnings(dict(healthy, loss=float("nan")))[0]


def test_rank_on_a_sample_of_dimensions():
    """rank_dims=K < D: the rank of K fixed, evenly spaced coordinates; std over all D."""
    from barlow_jax.health import rank_sample
    z = np.random.default_rng(6).normal(size=(64, 48)).astype(np.float32) * np.linspace(
        0.2, 3.0, 48).astype(np.float32)
    idx = rank_sample(48, 16)
    np.testing.assert_array_equal(idx, np.arange(16) * 3)
    assert rank_sample(48, 48) is None and rank_sample(48, 0) is None
    out = embedding_health(jnp.asarray(z), rank_dims=16)
    np.testing.assert_allclose(out["embed_eff_rank"], numpy_erank(z[:, idx]), rtol=1e-3)
    np.testing.assert_allclose(out["embed_rank_frac"], numpy_erank(z[:, idx]) / 16, rtol=1e-3)
    np.testing.assert_allclose(out["embed_std_min"], z.std(0).min(), rtol=1e-5)
    # 8 devices: the same numbers
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    fn = jax.jit(jax.shard_map(lambda x: embedding_health(x, axis_name="data", rank_dims=16),
                               mesh=mesh, in_specs=P("data"), out_specs=P()))
    sharded = fn(jnp.asarray(z))
    for key in out:
        np.testing.assert_allclose(sharded[key], out[key], rtol=1e-4, err_msg=key)
    # a collapse to 3 dimensions still shows on the sample
    low = with_singular_values(64, 48, np.array([3.0, 2.0, 1.0]), seed=7).astype(np.float32)
    erank = float(embedding_health(jnp.asarray(low), rank_dims=16)["embed_eff_rank"])
    assert 1.0 <= erank <= 3.0 + 1e-3
