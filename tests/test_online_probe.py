"""The online linear probe trains on stop-gradient features and leaves the backbone alone.

* Bit-identical backbone: the same step (same seed, same batch) with the probe
  on and off gives exactly equal params, batch_stats and optimizer state, at 1
  and at 8 devices (two steps, so the probe's first update is also exercised).
* The probe itself learns: on separable features it reaches high train top-1.
* The trainer logs online_top1 and online_test_top1, checkpoints the probe, and
  a resumed run ends with the same probe as a straight one.
"""

import shutil

import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from barlow_jax import online_probe, parallel
from barlow_jax.methods import get_method
from barlow_jax.models import build_ssl_net
from barlow_jax.steps import make_train_step
from barlow_jax.train import init_state, train_and_evaluate
from configs import smoke


def _config(enabled):
    c = smoke.get_config()
    c.model.width = 4
    c.projector.spec = "32-16"
    c.online_probe.enabled = enabled
    return c


def _fixed_views(batch, device_data, key):
    del device_data, key
    return batch["view1"], batch["view2"]


def _two_steps(n_dev, enabled, batch_np):
    config = _config(enabled)
    mesh = parallel.make_mesh(jax.devices()[:n_dev])
    method = get_method(config.method)
    tx = optax.sgd(0.5, momentum=0.9)
    ptx = online_probe.probe_tx(config.online_probe) if enabled else None
    state = init_state(config, method, tx, mesh, (2, 16, 16, 3), ptx)
    step = make_train_step(mesh, model=build_ssl_net(config, axis_name="data"),
                           target_model=None, method=method, tx=tx,
                           make_views=_fixed_views, loss_config=config.loss, probe_tx=ptx)
    batch = jax.device_put(batch_np, NamedSharding(mesh, P("data")))
    key = parallel.replicate(jax.random.key_data(jax.random.key(0)), mesh)
    for _ in range(2):
        state, metrics = step(state, batch, None, key)
    return jax.device_get(state), jax.device_get(metrics)


@pytest.fixture(scope="module")
def batch_np():
    rng = np.random.default_rng(0)
    v1 = rng.normal(size=(16, 16, 16, 3)).astype(np.float32)
    return {"view1": v1, "view2": (v1 + 0.3 * rng.normal(size=v1.shape)).astype(np.float32),
            "label": rng.integers(0, 10, size=16).astype(np.int32)}


@pytest.mark.parametrize("n_dev", [1, 8])
def test_backbone_update_bit_identical(n_dev, batch_np):
    off, m_off = _two_steps(n_dev, False, batch_np)
    on, m_on = _two_steps(n_dev, True, batch_np)
    assert off.probe is None and on.probe is not None
    for name in ("params", "batch_stats", "opt_state"):
        a, b = jax.tree.leaves(getattr(off, name)), jax.tree.leaves(getattr(on, name))
        assert len(a) == len(b) and a
        for x, y in zip(a, b):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
    assert m_off["loss"] == m_on["loss"]
    assert "online_top1" in m_on and "online_top1" not in m_off
    assert "_probe_features" not in m_on
    # the probe moved away from its zero init
    assert np.abs(on.probe["params"]["kernel"]).max() > 0


def test_probe_update_learns_and_ignores_unlabelled():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(4, 8)).astype(np.float32) * 3
    labels = rng.integers(0, 4, size=64).astype(np.int32)
    feats = centers[labels] + 0.1 * rng.normal(size=(64, 8)).astype(np.float32)
    c = _config(True)
    c.data.num_classes = 4
    tx = online_probe.probe_tx(c.online_probe)
    probe = online_probe.init_probe(c, 8, tx)
    noisy = labels.copy()
    noisy[:16] = -1                              # unlabelled rows carry no loss
    step = jax.jit(lambda p, f, y: online_probe.probe_update(p, f, y, tx, axis_name=None))
    for _ in range(30):
        probe, m = step(probe, feats, noisy)
    assert float(m["online_top1"]) > 95.0
    assert online_probe.test_top1(probe["params"], feats, labels) > 95.0
    # all rows unlabelled: zero gradient, finite metrics
    p0 = online_probe.init_probe(c, 8, tx)
    p1, m = step(p0, feats, np.full(64, -1, np.int32))
    assert np.all(np.asarray(p1["params"]["kernel"]) == 0) and np.isfinite(m["online_loss"])


def test_bad_optimizer_named():
    c = _config(True)
    c.online_probe.optimizer = "lamb"
    with pytest.raises(ValueError, match="'sgd', 'adam'"):
        online_probe.probe_tx(c.online_probe)


def test_trainer_logs_and_resumes_probe(tmp_path):
    c = _config(True)
    c.num_train_steps = 4
    c.eval_every_steps = 4
    c.checkpoint_every_steps = 2
    straight = train_and_evaluate(c, str(tmp_path / "a"))
    assert 0.0 <= straight["online_top1"] <= 100.0
    assert 0.0 <= straight["online_test_top1"] <= 100.0
    # resume from the step-2 checkpoint of a copy of the same run
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")
    resumed = train_and_evaluate(c, str(tmp_path / "b"))
    assert resumed["online_top1"] == straight["online_top1"]
    assert resumed["online_test_top1"] == straight["online_test_top1"]
    from barlow_jax.checkpointing import Checkpointer
    raw_a, _ = Checkpointer(str(tmp_path / "a"), read_only=True).restore_raw(4)
    raw_b, _ = Checkpointer(str(tmp_path / "b"), read_only=True).restore_raw(4)
    for x, y in zip(jax.tree.leaves(raw_a["probe"]), jax.tree.leaves(raw_b["probe"])):
        np.testing.assert_array_equal(x, y)


def test_trainer_backbone_bit_identical_with_probe_on_and_off(tmp_path):
    """The whole trainer on a labelled uint8 dataset held on the devices (placement 'device',
    as the CIFAR configs on an accelerator): the checkpointed backbone, heads, BN statistics
    and optimizer state are bitwise equal with the probe on and off."""
    from barlow_jax.checkpointing import Checkpointer
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (96, 16, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 96).astype(np.int32)
    raws = {}
    for enabled in (False, True):
        c = _config(enabled)
        c.num_train_steps, c.log_every_steps, c.checkpoint_every_steps = 3, 1, 3
        c.data.source, c.data.placement = "arrays", "device"
        c.data.num_classes = 10
        c.data.arrays = {"train": (images, labels), "test": (images[:32], labels[:32])}
        record = train_and_evaluate(c, str(tmp_path / f"p{int(enabled)}"))
        assert ("online_top1" in record) == enabled
        ckpt = Checkpointer(str(tmp_path / f"p{int(enabled)}"), read_only=True)
        raws[enabled], _ = ckpt.restore_raw(3)
        ckpt.close()
    for name in ("params", "batch_stats", "opt_state"):
        a, b = jax.tree.leaves(raws[False][name]), jax.tree.leaves(raws[True][name])
        assert len(a) == len(b) and a
        for x, y in zip(a, b):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
    assert np.abs(np.asarray(raws[True]["probe"]["params"]["kernel"])).max() > 0
