"""The benchmark times the training step train.py runs, and reads its collective bytes.

One full ResNet-50 + 8192-8192-8192 Barlow Twins step works too (smoke).
"""

import math

import pytest

from barlow_jax import steps, train
from barlow_jax.bench import benchmark, compare, format_compare, format_result, override
from configs import bt_in1k, smoke

# These tests read the compiled program (collective bytes, memory): XLA's passes on.
pytestmark = pytest.mark.usefixtures("optimized")


def test_benchmark_smoke_config():
    c = smoke.get_config()
    c.log_every_steps = 3
    r = benchmark(c, steps=2, warmup=1)
    assert r["pairs_per_sec"] > 0 and r["step_time_ms"] > 0
    assert r["flops_per_step_per_device"] > 0
    assert r["devices"] == 8 and r["peak_memory_bytes"] > 0
    assert math.isfinite(r["last_loss"])
    # the training step's own metrics, health included, and the rank on logged steps
    assert {"embed_std_min", "embed_eff_rank", "c_block", "grad_norm"} <= set(r["metric_keys"])
    assert r["logged_steps_timed"] >= 1 and r["step_time_logged_ms"] > 0
    assert r["step_time_ms"] == (2 * r["step_time_unlogged_ms"] + r["step_time_logged_ms"]) / 3
    # collective bytes per device: gradients (all-reduce), C from the gathered embeddings
    every = r["collectives"]["compiled"]["every_step"]
    assert every["all-reduce"]["bytes"] > 0 and every["all-gather"]["bytes"] == 32 * 64 * 4
    assert r["collectives"]["compiled"]["conditional"]["all-reduce"]["bytes"] == 64 * 64 * 4
    text = format_result(r)
    assert "image pairs/s" in text and "MFU" in text and "all-gather" in text


def test_train_and_bench_build_the_same_step():
    assert train.build_train_step is steps.build_train_step
    import inspect
    from barlow_jax import bench
    assert "build_train_step(config, mesh" in inspect.getsource(bench.prepare)
    assert "prepare(config" in inspect.getsource(bench.benchmark)


def test_collectives_only_allocates_nothing_and_reports_bytes():
    c = smoke.get_config()
    c.step.one_pass = False
    r = benchmark(c, collectives_only=True)
    assert "pairs_per_sec" not in r and r["one_pass"] is False
    assert r["collectives"]["compiled"]["every_step"]["total"]["bytes"] > 0
    assert "all-reduce" in format_result(r)


def test_interleaved_comparison_of_two_levers():
    import jax
    import pytest
    c = smoke.get_config()
    c.model.width, c.projector.spec, c.log_every_steps = 4, "32-16", 100
    c.lock()
    b = override(c, "step.one_pass=False")
    assert b.step.one_pass is False and c.step.one_pass is True
    with pytest.raises(ValueError, match="step.one_pass=True or"):
        override(c, "step.one_pass=maybe")
    r = compare({"one pass": c, "two passes": b}, steps=2, warmup=1, devices=jax.devices()[:1])
    assert r["one pass"]["one_pass"] and not r["two passes"]["one_pass"]
    assert r["ratio"] == r["one pass"]["median_ms"] / r["two passes"]["median_ms"] > 0
    assert "one pass / two passes" in format_compare(r)


def test_resnet50_paper_step_smoke():
    """The paper's network (ResNet-50, projector 8192-8192-8192, bf16) takes a finite step.

    On one device: replicated on 8 fake CPU devices its ~150M parameters, their
    momentum and gradients would take ~24 GB of host memory.
    """
    import jax
    c = bt_in1k.get_config()
    c.batch_size = 8
    c.data.image_size = 64
    r = benchmark(c, steps=1, warmup=0, devices=jax.devices()[:1], logged_steps=0)
    assert math.isfinite(r["last_loss"]) and r["last_loss"] > 0
    assert r["flops_per_step_per_device"] > 1e9
