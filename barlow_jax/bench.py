"""Training-step benchmark on synthetic views already on the devices.

    python -m barlow_jax.bench --config=configs/bt_in1k.py --config.batch_size=256 [--steps=20]

Input loading and augmentation are excluded (the views are fixed arrays on
the devices), so this measures the step itself: forward/backward of both
views, the loss, the optimizer (and the EMA target for BYOL). Prints image
pairs/s, step time, peak device memory and model FLOP utilisation (MFU =
XLA-counted FLOPs of the compiled step / step time / the device's peak).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402


def define_flags():
    """The command-line flags; defined only when the module runs as a program."""
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_integer("steps", 20, "Timed steps (after warm-up).")
    flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
    flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s of one device for MFU (0: look it up).")
    flags.DEFINE_string("json_out", "", "Also append the result as one JSON line to this file.")
    flags.mark_flags_as_required(["config"])

# Dense peak TFLOP/s per device from vendor specs, by compute dtype.
PEAK_TFLOPS = {
    "H200": {"bfloat16": 989.0, "float32": 67.0},
    "H100": {"bfloat16": 989.0, "float32": 67.0},
    "A100": {"bfloat16": 312.0, "float32": 19.5},
    "TPU v4": {"bfloat16": 275.0, "float32": 275.0},
    "TPU v5 lite": {"bfloat16": 197.0, "float32": 197.0},
    "TPU v5p": {"bfloat16": 459.0, "float32": 459.0},
}


def device_peak_tflops(device, dtype: str):
    kind = getattr(device, "device_kind", "")
    for name, peaks in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return peaks[dtype]
    return None


def benchmark(config, steps: int = 20, warmup: int = 3, peak_tflops: float = 0.0,
              devices=None):
    """Returns a dict of measurements for ``config``'s training step (``devices``: all)."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    from barlow_jax import parallel
    from barlow_jax.methods import get_method
    from barlow_jax.models import build_ssl_net
    from barlow_jax.optim import build_optimizer
    from barlow_jax.steps import make_train_step
    from barlow_jax.train import _ema_schedule, check_config, init_state

    method = get_method(config.method)
    check_config(config, method)
    mesh = parallel.make_mesh(devices)
    parallel.check_batch_size(config.batch_size, mesh)
    tx, _ = build_optimizer(config.optimizer, batch_size=config.batch_size,
                            steps_per_epoch=100, total_steps=10_000)
    s = config.data.image_size
    state = init_state(config, method, tx, mesh, (2, s, s, 3))
    step = make_train_step(
        mesh, model=build_ssl_net(config, axis_name=parallel.AXIS),
        target_model=build_ssl_net(config, axis_name=parallel.AXIS, with_predictor=False)
        if method.ema_target else None,
        method=method, tx=tx, make_views=lambda b, d, k: (b["view1"], b["view2"]),
        loss_config=config.loss,
        ema_tau=_ema_schedule(config, 10_000) if method.ema_target else None)
    shape = (config.batch_size, s, s, 3)
    sharding = NamedSharding(mesh, P(parallel.AXIS))
    make = jax.jit(lambda k: {"view1": jax.random.normal(k, shape),
                              "view2": jax.random.normal(jax.random.fold_in(k, 1), shape)},
                   out_shardings=sharding)
    batch = make(jax.random.key(0))
    key = parallel.replicate(jax.random.key_data(jax.random.key(0)), mesh)

    t0 = time.time()
    compiled = step.lower(state, batch, None, key).compile()
    compile_s = time.time() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0

    for _ in range(warmup):
        state, m = compiled(state, batch, None, key)
    jax.block_until_ready(state)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, m = compiled(state, batch, None, key)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    step_time = statistics.median(times)
    loss = float(np.asarray(m["loss"]))

    dev = mesh.devices.flat[0]
    mem = None
    try:
        stats = dev.memory_stats()
        mem = stats.get("peak_bytes_in_use") if stats else None
    except Exception:  # CPU backends may not report memory
        mem = None
    mem_source = "device peak_bytes_in_use"
    if mem is None:
        ma = compiled.memory_analysis()
        if ma is not None:
            mem = (ma.argument_size_in_bytes + ma.output_size_in_bytes +
                   ma.temp_size_in_bytes - ma.alias_size_in_bytes)
            mem_source = "XLA memory analysis of the step (arguments + outputs + temporaries)"
    n_dev = mesh.devices.size
    peak = peak_tflops or device_peak_tflops(dev, config.compute_dtype)
    # cost_analysis counts the FLOPs of one device's program under shard_map.
    mfu = flops / step_time / (peak * 1e12) if (peak and flops) else None
    return {
        "config_method": config.method, "backbone": config.model.name,
        "projector": config.projector.spec, "image_size": s, "batch_size": config.batch_size,
        "compute_dtype": config.compute_dtype, "devices": n_dev,
        "device_kind": getattr(dev, "device_kind", dev.platform),
        "pairs_per_sec": config.batch_size / step_time, "step_time_ms": step_time * 1e3,
        "step_time_min_ms": min(times) * 1e3, "step_time_max_ms": max(times) * 1e3,
        "compile_seconds": compile_s, "flops_per_step_per_device": flops,
        "peak_memory_bytes": mem, "memory_source": mem_source,
        "peak_tflops_per_device": peak, "mfu": mfu, "timed_steps": steps, "last_loss": loss,
    }


def format_result(r) -> str:
    mem = f"{r['peak_memory_bytes'] / 2**30:.2f} GiB" if r["peak_memory_bytes"] else "n/a"
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (unknown device peak; pass --peak_tflops)"
    return "\n".join([
        f"{r['config_method']} {r['backbone']} proj {r['projector']} {r['image_size']}px "
        f"batch {r['batch_size']} {r['compute_dtype']} on {r['devices']} x {r['device_kind']}",
        f"  image pairs/s      {r['pairs_per_sec']:.1f}",
        f"  step time          {r['step_time_ms']:.2f} ms (median of {r['timed_steps']}; "
        f"min {r['step_time_min_ms']:.2f}, max {r['step_time_max_ms']:.2f})",
        f"  compile            {r['compile_seconds']:.1f} s",
        f"  peak memory        {mem} ({r['memory_source']})",
        f"  FLOPs/step/device  {r['flops_per_step_per_device'] / 1e9:.2f} GFLOP (XLA cost analysis)",
        f"  MFU                {mfu}",
    ])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    result = benchmark(f.config, steps=f.steps, warmup=f.warmup, peak_tflops=f.peak_tflops)
    print(format_result(result), flush=True)
    if f.json_out:
        with open(f.json_out, "a") as out:
            out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    from barlow_jax.cli import parse_flags
    define_flags()
    app.run(main, flags_parser=parse_flags)
