"""Runs that do not depend on the hardware (issue 9 item 6) and no per-step host traffic
(issue 13 item 1), in-process on subsets of the 8 fake CPU devices.

For placements ``device`` and ``split`` the same smoke config on 1 device and on 8
devices gives the same per-step losses (to float32 reduction-order rounding), and a
run interrupted on 8 devices and continued on 4 equals the uninterrupted one. The
loop below is the trainer's (init_state, create_pipeline, make_train_step) without
the CLI, so the mesh can be any subset of the devices.
"""

import jax
import numpy as np
import pytest

from barlow_jax import parallel
from barlow_jax.data import create_pipeline
from barlow_jax.methods import get_method
from barlow_jax.models import build_ssl_net
from barlow_jax.optim import build_optimizer
from barlow_jax.steps import make_train_step
from barlow_jax.train import init_state, total_train_steps
from configs import smoke

STEPS = 10   # smoke: 256 examples / batch 32 = 8 steps per epoch, so an epoch boundary too


def _config(placement):
    c = smoke.get_config()
    c.data.placement = placement
    c.num_train_steps = STEPS
    return c


class Run:
    """The trainer's pieces on a mesh of ``n_devices`` devices, from ``start_step``."""

    def __init__(self, config, n_devices, start_step=0, state=None):
        self.mesh = parallel.make_mesh(devices=jax.devices()[:n_devices])
        method = get_method(config.method)
        self.pipeline = create_pipeline(config.data, global_batch_size=config.batch_size,
                                        seed=config.seed, mesh=self.mesh, start_step=start_step)
        total = total_train_steps(config, self.pipeline.steps_per_epoch)
        tx, _ = build_optimizer(config.optimizer, batch_size=config.batch_size,
                                steps_per_epoch=self.pipeline.steps_per_epoch, total_steps=total)
        size = config.data.image_size
        self.state = init_state(config, method, tx, self.mesh, (2, size, size, 3))
        if state is not None:   # a host copy of a state from another mesh (a "checkpoint")
            self.state = jax.device_put(state, parallel.replicated(self.mesh))
        self.step_fn = make_train_step(
            self.mesh, model=build_ssl_net(config, axis_name=parallel.AXIS), target_model=None,
            method=method, tx=tx, make_views=self.pipeline.make_views, loss_config=config.loss)
        self.seed_key = parallel.replicate(
            jax.random.key_data(jax.random.key(config.seed)), self.mesh)

    def step(self):
        batch = next(self.pipeline)
        self.state, m = self.step_fn(self.state, batch, self.pipeline.device_data, self.seed_key)
        return m

    def losses(self, n):
        return [float(self.step()["loss"]) for _ in range(n)]

    def host_state(self):
        return jax.device_get(self.state)


@pytest.mark.parametrize("placement", ["device", "split"])
def test_losses_do_not_depend_on_the_device_count_and_resume_on_another(placement):
    c = _config(placement)
    one = Run(c, 1).losses(STEPS)
    eight = Run(c, 8)
    first = eight.losses(5)
    saved = eight.host_state()
    rest8 = eight.losses(STEPS - 5)
    np.testing.assert_allclose(first + rest8, one, rtol=2e-5, atol=1e-5)
    # Interrupted on 8 devices after step 5, resumed on 4: the same run.
    rest4 = Run(c, 4, start_step=5, state=saved).losses(STEPS - 5)
    np.testing.assert_allclose(rest4, rest8, rtol=2e-5, atol=1e-5)
    # The losses change from step to step: the comparison is not of constants.
    assert len({round(x, 4) for x in one}) > STEPS // 2


def test_device_batches_and_keys_are_global():
    c = _config("device")
    p1 = create_pipeline(c.data, global_batch_size=32, seed=3,
                         mesh=parallel.make_mesh(jax.devices()[:1]))
    p8 = create_pipeline(c.data, global_batch_size=32, seed=3, mesh=parallel.make_mesh())
    resumed = create_pipeline(c.data, global_batch_size=32, seed=3, start_step=6,
                              mesh=parallel.make_mesh(jax.devices()[:2]))
    idx1 = [np.asarray(next(p1)["idx"]) for _ in range(STEPS)]
    idx8 = [np.asarray(next(p8)["idx"]) for _ in range(STEPS)]
    for k in range(STEPS):
        np.testing.assert_array_equal(idx1[k], idx8[k])
        np.testing.assert_array_equal(p8.indices(k), idx1[k])
    for k in range(6, STEPS):
        np.testing.assert_array_equal(np.asarray(next(resumed)["idx"]), idx1[k])
    # Each epoch visits distinct examples; epochs differ in order.
    spe = p1.steps_per_epoch
    epoch0 = np.concatenate(idx1[:spe])
    assert len(set(epoch0)) == len(epoch0) == spe * 32
    assert not np.array_equal(idx1[spe], idx1[0])
    # Every device holds the whole dataset.
    images = np.asarray(p8.device_data["images"])
    assert images.shape[0] == 8 and all(np.array_equal(images[0], im) for im in images)


def test_device_placement_has_no_host_transfer_per_step():
    """After the first step, steps inside an epoch do no host<->device transfer at all:
    not implicit (jax.transfer_guard('disallow')), and the pipeline's next() not even an
    explicit one ('disallow_explicit'): the epoch's indices were placed at its first step."""
    c = _config("device")
    run = Run(c, 8)
    run.step()
    spe = run.pipeline.steps_per_epoch
    ms = []
    for k in range(1, spe + 2):
        epoch_start = k % spe == 0
        with jax.transfer_guard("allow" if epoch_start else "disallow_explicit"):
            batch = next(run.pipeline)
        with jax.transfer_guard("disallow"):
            run.state, m = run.step_fn(run.state, batch, run.pipeline.device_data, run.seed_key)
        ms.append(m["loss"])
    losses = [float(x) for x in ms]
    assert np.isfinite(losses).all()
    # The guard is live: a host scalar into the jitted step is refused.
    with pytest.raises(Exception, match="[Dd]isallowed"):
        with jax.transfer_guard("disallow"):
            jax.jit(lambda x: x + 1)(np.float32(1.0))
