"""The benchmark runs, and one full ResNet-50 + 8192-8192-8192 Barlow Twins step works (smoke)."""

import math

from barlow_jax.bench import benchmark, format_result
from configs import bt_in1k, smoke


def test_benchmark_smoke_config():
    r = benchmark(smoke.get_config(), steps=2, warmup=1)
    assert r["pairs_per_sec"] > 0 and r["step_time_ms"] > 0
    assert r["flops_per_step_per_device"] > 0
    assert r["devices"] == 8 and r["peak_memory_bytes"] > 0
    assert math.isfinite(r["last_loss"])
    text = format_result(r)
    assert "image pairs/s" in text and "MFU" in text


def test_resnet50_paper_step_smoke():
    """The paper's network (ResNet-50, projector 8192-8192-8192, bf16) takes a finite step.

    On one device: replicated on 8 fake CPU devices its ~150M parameters, their
    momentum and gradients would take ~24 GB of host memory.
    """
    import jax
    c = bt_in1k.get_config()
    c.batch_size = 8
    c.data.image_size = 64
    r = benchmark(c, steps=1, warmup=0, devices=jax.devices()[:1])
    assert math.isfinite(r["last_loss"]) and r["last_loss"] > 0
    assert r["flops_per_step_per_device"] > 1e9
