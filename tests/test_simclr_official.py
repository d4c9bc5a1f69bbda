"""SimCLR's registry loss against a NumPy port of google-research/simclr tf2/objective.py.

``add_contrastive_loss(hidden, hidden_norm=True, temperature)``: l2-normalise,
logits_aa / logits_bb with the diagonal minus LARGE_NUM, logits_ab / logits_ba,
loss_a = softmax_cross_entropy([ab, aa]) (mean over the batch), likewise
loss_b with [ba, bb]; loss = loss_a + loss_b.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from barlow_jax.methods import simclr
from configs import base, simclr_cifar10, simclr_in1k

LARGE_NUM = 1e9


def official_loss(h1, h2, temperature):
    h1 = h1 / np.linalg.norm(h1, axis=1, keepdims=True)
    h2 = h2 / np.linalg.norm(h2, axis=1, keepdims=True)
    n = len(h1)
    labels = np.concatenate([np.eye(n), np.zeros((n, n))], 1)
    mask = np.eye(n)
    aa = h1 @ h1.T / temperature - mask * LARGE_NUM
    bb = h2 @ h2.T / temperature - mask * LARGE_NUM
    ab, ba = h1 @ h2.T / temperature, h2 @ h1.T / temperature

    def xent(logits):
        logits = logits - logits.max(1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        return -(labels * logp).sum(1).mean()

    return xent(np.concatenate([ab, aa], 1)) + xent(np.concatenate([ba, bb], 1))


@pytest.mark.parametrize("n_dev", [1, 8])
def test_registry_loss_is_the_official_loss_a_plus_loss_b(n_dev):
    rng = np.random.default_rng(0)
    z1, z2 = rng.standard_normal((2, 16, 8))
    cfg = base.get_config().loss
    cfg.temperature = 0.1
    want = official_loss(z1, z2, 0.1)
    out = lambda z: {"z": z}
    if n_dev == 1:
        got, _ = simclr.method_loss(out(jnp.asarray(z1, jnp.float32)),
                                    out(jnp.asarray(z2, jnp.float32)), None, None, cfg, None)
    else:
        mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        f = jax.jit(jax.shard_map(
            lambda a, b: simclr.method_loss(out(a), out(b), None, None, cfg, "data")[0],
            mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P()))
        sh = NamedSharding(mesh, P("data"))
        got = f(jax.device_put(jnp.asarray(z1, jnp.float32), sh),
                jax.device_put(jnp.asarray(z2, jnp.float32), sh))
    assert float(got) == pytest.approx(want, rel=2e-6)
    cfg.simclr_loss_scale = 1.0   # solo-learn: the mean over the 2N anchors, half of it
    got1, _ = simclr.method_loss(out(jnp.asarray(z1, jnp.float32)),
                                 out(jnp.asarray(z2, jnp.float32)), None, None, cfg, None)
    assert float(got1) == pytest.approx(want / 2, rel=2e-6)


def test_configs_choose_their_sources_scale():
    assert simclr_in1k.get_config().loss.simclr_loss_scale == 2.0
    assert simclr_in1k.get_config().optimizer.name == "simclr_lars"
    assert simclr_in1k.get_config().data.augment.view1.color_ops == "tf"
    assert simclr_cifar10.get_config().loss.simclr_loss_scale == 1.0
