"""float16 dynamic loss scaling (barlow_jax/loss_scale.py): the scale rule against a NumPy
model of flax's DynamicScale, skipped steps keep the state, a float16 run trains through
overflowing steps without a divergence, and compute_dtype='auto' picks per device."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from barlow_jax import loss_scale, train
from barlow_jax.models import best_dtype_name, compute_dtype, compute_dtype_name
from barlow_jax.state import TrainState
from configs import smoke


def numpy_rule(scale, good, finite):
    """flax.training.dynamic_scale.DynamicScale.value_and_grad's update, in NumPy."""
    grow = good == loss_scale.GROWTH_INTERVAL
    if finite:
        new_scale = min(scale * loss_scale.GROWTH_FACTOR, np.finfo(np.float32).max) if grow \
            else scale
    else:
        new_scale = max(scale * loss_scale.BACKOFF_FACTOR, np.finfo(np.float32).tiny)
    new_good = 0 if (grow or not finite) else good + 1
    return np.float32(new_scale), new_good


def test_scale_rule_matches_numpy_model():
    rng = np.random.default_rng(0)
    # Long finite stretches (so the scale grows) broken by bursts of overflow.
    pattern = []
    for _ in range(6):
        pattern += [True] * int(rng.integers(1995, 2010)) + [False] * int(rng.integers(1, 4))
    pattern += [False] * 200  # backs off down to the float32 floor
    finite = jnp.asarray(pattern)
    ls0 = loss_scale.LossScale(scale=jnp.float32(loss_scale.INITIAL_SCALE),
                               good_steps=jnp.int32(0), skipped=jnp.int32(0))

    def body(ls, f):
        ls = loss_scale.adjust(ls, f)
        return ls, (ls.scale, ls.good_steps)

    last, (scales, goods) = jax.jit(lambda ls: jax.lax.scan(body, ls, finite))(ls0)
    scales, goods = np.asarray(scales), np.asarray(goods)
    s, g = np.float32(loss_scale.INITIAL_SCALE), 0
    grew = 0
    for i, f in enumerate(pattern):
        s_new, g = numpy_rule(s, g, f)
        grew += s_new > s
        s = s_new
        assert scales[i] == s and goods[i] == g, (i, scales[i], s, goods[i], g)
    assert 3 <= grew < 6      # the growth branch ran, and a stretch < 2001 steps did not grow
    assert float(last.scale) == np.finfo(np.float32).tiny  # and the floor
    assert int(last.skipped) == pattern.count(False)


def test_value_and_grad_unscales_and_finish_skips_nonfinite():
    def fn(p):
        y = (p["w"].astype(jnp.float16) * 3.0).astype(jnp.float32)
        return jnp.sum(y ** 2), {"aux": 1.0}

    params = {"w": jnp.array([0.5, -1.0], jnp.float32)}
    ls = loss_scale.LossScale(scale=jnp.float32(1024.0), good_steps=jnp.int32(5),
                              skipped=jnp.int32(0))
    (loss, aux), grads = loss_scale.value_and_grad(fn, ls)(params)
    (loss0, _), grads0 = loss_scale.value_and_grad(fn, None)(params)
    np.testing.assert_allclose(loss, loss0, rtol=1e-6)
    np.testing.assert_allclose(grads["w"], grads0["w"], rtol=1e-3)
    assert grads["w"].dtype == jnp.float32

    old = TrainState(step=jnp.int32(7), params=params, batch_stats={"m": jnp.ones(2)},
                     opt_state={"mu": jnp.zeros(2)}, loss_scale=ls)
    new = old.replace(step=jnp.int32(8), params={"w": params["w"] + 1.0},
                      batch_stats={"m": jnp.zeros(2)}, opt_state={"mu": jnp.ones(2)})
    bad = {"w": jnp.array([jnp.inf, 1.0])}
    kept, m = loss_scale.finish(old, new, bad, {"loss": jnp.float32(1.0)})
    assert int(kept.step) == 8                               # the batch is consumed
    np.testing.assert_array_equal(kept.params["w"], params["w"])  # nothing else moved
    np.testing.assert_array_equal(kept.batch_stats["m"], 1.0)
    np.testing.assert_array_equal(kept.opt_state["mu"], 0.0)
    assert float(kept.loss_scale.scale) == 512.0 and int(kept.loss_scale.good_steps) == 0
    assert float(m["grads_finite"]) == 0.0 and int(m["skipped_steps"]) == 1
    applied, m = loss_scale.finish(old, new, grads, {})
    np.testing.assert_array_equal(applied.params["w"], params["w"] + 1.0)
    assert int(applied.loss_scale.good_steps) == 6 and float(m["grads_finite"]) == 1.0
    # Other dtypes: no loss scale, the step is untouched.
    plain = old.replace(loss_scale=None)
    same, m = loss_scale.finish(plain, new.replace(loss_scale=None), bad, {"x": 1})
    assert same.params is new.params and m == {"x": 1}


def test_skip_is_benign_only_while_the_scale_is_at_least_one():
    assert loss_scale.skip_is_benign({"grads_finite": 0.0, "loss_scale": 2.0 ** 15,
                                      "grad_norm": float("inf")})
    assert not loss_scale.skip_is_benign({"grads_finite": 0.0, "loss_scale": 0.5})
    assert not loss_scale.skip_is_benign({"loss": float("nan")})        # bf16 / fp32 runs
    assert not loss_scale.skip_is_benign({"grads_finite": 1.0, "loss_scale": 2.0 ** 15})


def _config(steps, dtype):
    c = smoke.get_config()
    c.compute_dtype = dtype
    c.num_train_steps, c.log_every_steps, c.checkpoint_every_steps = steps, 2, steps
    return c


def test_float16_run_skips_overflowing_steps_without_diverging(tmp_path, capsys):
    """The default start scale 2^16 is too large for this net (gradient norm ~200 at init):
    its first float16 steps overflow in the backward pass and are skipped (not a
    divergence) until the scale is below ~2^11; then it trains."""
    from tests.cli_helpers import read_metrics
    work = str(tmp_path / "run")
    record = train.train_and_evaluate(_config(12, "float16"), work)
    assert "Training stopped" not in capsys.readouterr().out
    recs = read_metrics(work)
    assert record["step"] == 12 and np.isfinite(record["loss"])
    skipped = int(record["skipped_steps"])
    assert 1 <= skipped <= 8, skipped                # overflowed at first, then recovered
    assert record["loss_scale"] == loss_scale.INITIAL_SCALE / 2 ** skipped
    assert recs[-1]["grads_finite"] == 1.0


def test_restore_across_compute_dtype_change(tmp_path):
    """compute_dtype may change on resume: a float32 checkpoint restores under float16
    (initial scale) and a float16 one under float32 (scale dropped)."""
    from barlow_jax import checkpointing, parallel
    from barlow_jax.methods import get_method
    from barlow_jax.optim import build_optimizer
    mesh = parallel.make_mesh()
    states = {}
    for dtype in ("float32", "float16"):
        c = _config(4, dtype)
        tx, _ = build_optimizer(c.optimizer, batch_size=c.batch_size, steps_per_epoch=8,
                                total_steps=4)
        states[dtype] = train.init_state(c, get_method(c.method), tx, mesh, (2, 16, 16, 3))
    assert states["float32"].loss_scale is None and states["float16"].loss_scale is not None
    for saved, resumed in (("float32", "float16"), ("float16", "float32")):
        ckpt = checkpointing.Checkpointer(str(tmp_path / saved))
        ckpt.save(3, states[saved].replace(step=states[saved].step + 3))
        ckpt.wait()
        got = loss_scale.restore(ckpt.restore, states[resumed], 3)
        ckpt.close()
        assert int(got.step) == 3
        if resumed == "float16":
            assert float(got.loss_scale.scale) == loss_scale.INITIAL_SCALE
        else:
            assert got.loss_scale is None
        np.testing.assert_array_equal(jax.tree.leaves(got.params)[0],
                                      jax.tree.leaves(states[saved].params)[0])


def _device(platform, kind="", cc=None):
    d = types.SimpleNamespace(platform=platform, device_kind=kind)
    if cc is not None:
        d.compute_capability = cc
    return d


@pytest.mark.parametrize("device, expected", [
    (_device("cpu"), "float32"),
    (_device("tpu", "TPU v4"), "bfloat16"),
    (_device("gpu", "Tesla T4", "7.5"), "float16"),
    (_device("gpu", "Tesla V100-SXM2-16GB", "7.0"), "float16"),
    (_device("gpu", "NVIDIA A100-SXM4-40GB", "8.0"), "bfloat16"),
    (_device("gpu", "NVIDIA H200", "9.0"), "bfloat16"),
    (_device("gpu", "Tesla T4"), "float16"),          # no compute_capability: by name
    (_device("gpu", "NVIDIA L4"), "bfloat16"),
])
def test_auto_dtype_per_device(device, expected):
    assert best_dtype_name(device) == expected


def test_auto_on_this_cpu_is_float32_and_bad_names_fail():
    c = smoke.get_config()
    c.compute_dtype = "auto"
    assert compute_dtype_name(c) == "float32" and compute_dtype(c) == jnp.float32
    assert loss_scale.init(c) is None
    c.compute_dtype = "float16"
    assert loss_scale.init(c) is not None
    c.compute_dtype = "fp16"
    with pytest.raises(ValueError, match="'float16'"):
        compute_dtype(c)
