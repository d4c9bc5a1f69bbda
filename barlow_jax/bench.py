"""Training-step benchmark on synthetic views already on the devices.

    python -m barlow_jax.bench --config=configs/bt_in1k.py --config.batch_size=256 [--steps=20]

It times THE training step: the function ``steps.build_train_step`` builds
for ``train.py`` from the same config (the method's loss, the embedding
health with its effective rank on logged steps, the optimizer, BYOL's EMA
target, the online probe when the config enables it, ``config.step``'s
levers), fed with fixed synthetic views instead of the data pipeline's
``make_views``: input loading and augmentation are excluded. Prints image
pairs/s, step time (steps without and with the logged-step health rank,
and their mix at ``config.log_every_steps``), peak device memory, model
FLOP utilisation (MFU = XLA-counted FLOPs of the compiled step / step time
/ the device's peak) and the step's collective bytes per device and kind,
read from the compiled program (barlow_jax/step_cost.py).

``--collectives_only``: compile the step for abstract inputs (nothing is
allocated) and print the collective bytes without running it; with
``--fake_devices=N`` on a CPU machine it lowers for N fake devices, and
``--nocompile`` reads the lowered program only (minutes faster), e.g.

    python -m barlow_jax.bench --config=configs/bt_in1k.py --fake_devices=64 \
        --collectives_only --nocompile

The CPU backend promotes bfloat16 all-reduces to float32, so for a bf16 step
the lowered figures (what JAX emits; a GPU keeps bf16 collectives) and the
CPU-compiled ones differ; both are in the JSON output.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from barlow_jax import step_cost  # imports no JAX (--fake_devices must precede it)


def define_flags():
    """The command-line flags; defined only when the module runs as a program."""
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_integer("steps", 20, "Timed steps (after warm-up).")
    flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
    flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s of one device for MFU (0: look it up).")
    flags.DEFINE_string("json_out", "", "Also append the result as one JSON line to this file.")
    flags.DEFINE_string("profile_steps", "", "START:STOP of the timed steps to trace with "
                        "jax.profiler (barlow_jax/profiling.py).")
    flags.DEFINE_string("profile_dir", "bench_profile", "Where --profile_steps writes the trace.")
    flags.DEFINE_bool("collectives_only", False, "Compile for abstract inputs and print the "
                      "collective bytes per device; do not run the step.")
    flags.DEFINE_multi_string("ab", [], "key=value override(s) of a second step to time "
                              "interleaved with the config's (A B B A ...), e.g. "
                              "--ab=step.one_pass=False; prints both medians and their ratio.")
    flags.DEFINE_bool("compile", True, "With --collectives_only: compile the step (the "
                      "compiled program's bytes); --nocompile reads the lowered program only.")
    flags.DEFINE_integer("fake_devices", 0, "Run on this many fake CPU devices "
                         "(--xla_force_host_platform_device_count), e.g. to read the collective "
                         "bytes at 64 or 256 devices with --collectives_only.")
    flags.mark_flags_as_required(["config"])


def _abstract(tree, sharding):
    import jax
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def prepare(config, devices=None, abstract: bool = False, compile_program: bool = True):
    """The step ``build_train_step`` builds for ``config``, compiled, with its inputs.

    Returns a dict: ``result`` (the settings, for the report), ``mesh``, ``state``,
    ``batch``, ``key`` (arrays, or shape structs when ``abstract``: nothing allocated),
    ``lowered``, ``compiled`` (None when not ``compile_program``), ``compile_seconds``.
    """
    import jax
    import numpy as np

    from barlow_jax import online_probe, parallel
    from barlow_jax.methods import get_method
    from barlow_jax.optim import build_optimizer
    from barlow_jax.steps import build_train_step, step_settings
    from barlow_jax.train import check_config, init_state

    method = get_method(config.method)
    check_config(config, method)
    mesh = parallel.make_mesh(devices)
    parallel.check_batch_size(config.batch_size, mesh)
    total_steps = 10_000
    tx, _ = build_optimizer(config.optimizer, batch_size=config.batch_size,
                            steps_per_epoch=100, total_steps=total_steps)
    probe_tx = None
    if online_probe.enabled(config):
        probe_tx = online_probe.probe_tx(config.online_probe)
    s = config.data.image_size
    make_state = lambda: init_state(config, method, tx, mesh, (2, s, s, 3), probe_tx)
    step = build_train_step(config, mesh, method=method, tx=tx,
                            make_views=lambda b, d, k: (b["view1"], b["view2"]),
                            total_steps=total_steps, probe_tx=probe_tx)
    shape = (config.batch_size, s, s, 3)
    sharding = parallel.batch_sharding(mesh)
    views = lambda k: {"view1": jax.random.normal(k, shape),
                       "view2": jax.random.normal(jax.random.fold_in(k, 1), shape)}
    if online_probe.enabled(config):
        base = views
        views = lambda k: dict(base(k), label=jax.random.randint(
            k, (config.batch_size,), 0, config.data.num_classes))
    make = jax.jit(views, out_shardings=sharding)
    n_dev = mesh.devices.size
    settings = step_settings(config)
    result = {
        "config_method": config.method, "backbone": config.model.name,
        "projector": config.projector.spec, "image_size": s, "batch_size": config.batch_size,
        "compute_dtype": config.compute_dtype, "devices": n_dev,
        "device_kind": getattr(mesh.devices.flat[0], "device_kind",
                               mesh.devices.flat[0].platform),
        "one_pass": settings["one_pass"], "grad_reduction": settings["grad_reduction"],
        "c_reduction": config.loss.get("c_reduction", "gather"),
        "remat": bool(config.model.get("remat", False)),
        "health_rank_dims": settings["health_rank_dims"],
        "log_every_steps": config.log_every_steps,
    }
    rep = parallel.replicated(mesh)
    if abstract:
        state = _abstract(jax.eval_shape(make_state), rep)
        batch = _abstract(jax.eval_shape(make, jax.random.key(0)), sharding)
        key = jax.ShapeDtypeStruct((2,), np.uint32, sharding=rep)
    else:
        state = make_state()
        batch = make(jax.random.key(0))
        key = parallel.replicate(jax.random.key_data(jax.random.key(0)), mesh)
    t0 = time.time()
    lowered = step.lower(state, batch, None, key)
    compiled = lowered.compile() if compile_program else None
    return {"result": result, "mesh": mesh, "state": state, "batch": batch, "key": key,
            "lowered": lowered, "compiled": compiled, "compile_seconds": time.time() - t0}


def benchmark(config, steps: int = 20, warmup: int = 3, peak_tflops: float = 0.0,
              devices=None, profile_steps: str = "", profile_dir: str = "bench_profile",
              collectives_only: bool = False, logged_steps: int = 2, compile_program: bool = True):
    """Returns a dict of measurements for ``config``'s training step (``devices``: all).

    ``collectives_only``: no run, the collective bytes only (of the compiled program, and
    of the lowered one; ``compile_program=False``: of the lowered one only, much faster).
    """
    import jax
    import numpy as np

    from barlow_jax import parallel

    prep = prepare(config, devices, abstract=collectives_only,
                   compile_program=compile_program or not collectives_only)
    result, mesh, lowered, compiled = (prep["result"], prep["mesh"], prep["lowered"],
                                       prep["compiled"])
    n_dev = result["devices"]
    if collectives_only:
        result["compile_seconds"] = prep["compile_seconds"]
        result["collectives"] = step_cost.collectives(compiled, lowered, n_dev)
        return result
    state, batch, key = prep["state"], prep["batch"], prep["key"]
    compile_s = prep["compile_seconds"]
    flops = step_cost.flops_per_device(compiled)

    every = max(int(config.log_every_steps), 1)
    done = 0  # steps run so far (state.step), known on the host without a transfer
    for _ in range(warmup):
        state, m = compiled(state, batch, None, key)
        done += 1
    jax.block_until_ready(state)
    plain, logged = [], []
    from barlow_jax.profiling import StepProfiler
    profiler = StepProfiler(profile_steps, profile_dir)  # traced steps include its overhead
    for i in range(steps):
        profiler.before(i)
        is_logged = (done + 1) % every == 0
        t = time.perf_counter()
        state, m = compiled(state, batch, None, key)
        jax.block_until_ready(m)
        (logged if is_logged else plain).append(time.perf_counter() - t)
        done += 1
        profiler.after(i + 1, m)
    profiler.close()
    loss = float(np.asarray(m["loss"]))
    # Steps that compute the health rank: jump the counter to just before a logged step
    # (it only moves the schedules and the view keys) and time a few of them.
    while every > 1 and len(logged) < logged_steps and steps > 0:
        nxt = (done // every + 1) * every - 1
        state = state.replace(step=parallel.replicate(np.int32(nxt), mesh))
        t = time.perf_counter()
        state, m = compiled(state, batch, None, key)
        jax.block_until_ready(m)
        logged.append(time.perf_counter() - t)
        done = nxt + 1
    times = plain + logged
    t_plain = statistics.median(plain) if plain else statistics.median(logged)
    t_logged = statistics.median(logged) if logged else t_plain
    step_time = ((every - 1) * t_plain + t_logged) / every  # a run logging every `every`

    dev = mesh.devices.flat[0]
    mem, mem_source = step_cost.peak_memory(dev, compiled)
    peak = peak_tflops or step_cost.device_peak_tflops(dev, config.compute_dtype)
    mfu = step_cost.mfu(flops, step_time, peak)  # FLOPs of one device's program
    result.update({
        "pairs_per_sec": config.batch_size / step_time, "step_time_ms": step_time * 1e3,
        "pairs_per_sec_unlogged": config.batch_size / t_plain,
        "step_time_unlogged_ms": t_plain * 1e3, "step_time_logged_ms": t_logged * 1e3,
        "logged_steps_timed": len(logged), "unlogged_steps_timed": len(plain),
        "step_time_min_ms": min(times) * 1e3, "step_time_max_ms": max(times) * 1e3,
        "compile_seconds": compile_s, "flops_per_step_per_device": flops,
        "peak_memory_bytes": mem, "memory_source": mem_source,
        "peak_tflops_per_device": peak, "mfu": mfu, "timed_steps": steps, "last_loss": loss,
        "metric_keys": sorted(m), "collectives": step_cost.collectives(compiled, lowered, n_dev),
    })
    return result


def _levers(r) -> str:
    return (f"one_pass={r['one_pass']} grad_reduction={r['grad_reduction']} "
            f"c_reduction={r['c_reduction']} remat={r['remat']} "
            f"health_rank_dims={r['health_rank_dims']}")


def format_collectives(r):
    from barlow_jax.collectives import format_summary
    form = "compiled" if "compiled" in r["collectives"] else "lowered"
    what = (f"compiled for {r['device_kind']}" if form == "compiled"
            else "as lowered by JAX, before the backend's passes")
    lines = [f"  collective bytes per device ({what}, {r['devices']} devices; "
             f"ring wire = what a bandwidth-optimal ring sends):"]
    lines += format_summary(r["collectives"][form], indent="    ")
    if form == "compiled" and "lowered" in r["collectives"]:
        t = r["collectives"]["lowered"]["every_step"]["total"]
        lines.append(f"    as lowered (before the backend's passes): "
                     f"{t['bytes'] / 1e6:.2f} MB every step")
    return lines


def _head(r) -> str:
    return (f"{r['config_method']} {r['backbone']} proj {r['projector']} {r['image_size']}px "
            f"batch {r['batch_size']} {r['compute_dtype']} on {r['devices']} x {r['device_kind']}")


def format_result(r) -> str:
    head = _head(r)
    if "pairs_per_sec" not in r:
        verb = "compile" if "compiled" in r["collectives"] else "lowering"
        return "\n".join([head, f"  levers             {_levers(r)}",
                          f"  {verb:<19}{r['compile_seconds']:.1f} s"]
                         + format_collectives(r))
    mem = f"{r['peak_memory_bytes'] / 2**30:.2f} GiB" if r["peak_memory_bytes"] else "n/a"
    mfu = (f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None
           else "n/a (unknown device peak; pass --peak_tflops)")
    return "\n".join([
        head,
        f"  levers             {_levers(r)}",
        f"  image pairs/s      {r['pairs_per_sec']:.1f} (health rank every "
        f"{r['log_every_steps']} steps; {r['pairs_per_sec_unlogged']:.1f} without it)",
        f"  step time          {r['step_time_ms']:.2f} ms: {r['step_time_unlogged_ms']:.2f} ms "
        f"(median of {r['unlogged_steps_timed']} steps without the rank), "
        f"{r['step_time_logged_ms']:.2f} ms (median of {r['logged_steps_timed']} with it); "
        f"min {r['step_time_min_ms']:.2f}, max {r['step_time_max_ms']:.2f}",
        f"  compile            {r['compile_seconds']:.1f} s",
        f"  peak memory        {mem} ({r['memory_source']})",
        f"  FLOPs/step/device  {r['flops_per_step_per_device'] / 1e9:.2f} GFLOP (XLA cost analysis)",
        f"  MFU                {mfu}",
    ] + format_collectives(r))


def override(config, assignment: str):
    """A copy of ``config`` with ``'a.b=value'`` set (value parsed to the key's type)."""
    import copy
    key, _, text = assignment.partition("=")
    new = copy.deepcopy(config)
    if hasattr(new, "unlock"):
        new.unlock()
    *path, node = key.strip().split(".")
    parent = new
    for name in path:
        parent = parent[name]
    old = parent[node]
    if isinstance(old, bool):
        if text not in ("True", "False", "true", "false", "1", "0"):
            raise ValueError(f"--ab: {key} is a bool; write {key}=True or {key}=False.")
        value = text in ("True", "true", "1")
    else:
        value = type(old)(text) if old is not None else text
    parent[node] = value
    return new


def compare(configs, steps: int = 10, warmup: int = 2, devices=None):
    """Times several configs' steps interleaved (A B B A A B ...) in one process.

    On a shared or drifting machine the ratio of medians is far steadier than
    two separate runs. ``configs``: {name: config}. Returns {name: {median_ms,
    pairs_per_sec, ...}} and ``ratio`` (first median / second median).
    """
    import jax

    preps = {name: prepare(c, devices) for name, c in configs.items()}
    for p in preps.values():
        for _ in range(warmup):
            p["state"], _m = p["compiled"](p["state"], p["batch"], None, p["key"])
        jax.block_until_ready(p["state"])
    times = {name: [] for name in preps}
    names = list(preps)
    for i in range(steps):
        for name in (names if i % 2 == 0 else names[::-1]):
            p = preps[name]
            t = time.perf_counter()
            p["state"], m = p["compiled"](p["state"], p["batch"], None, p["key"])
            jax.block_until_ready(m)
            times[name].append(time.perf_counter() - t)
    out = {}
    for name, p in preps.items():
        med = statistics.median(times[name])
        mem = step_cost.step_memory_bytes(p["compiled"])
        out[name] = dict(p["result"], median_ms=med * 1e3,
                         pairs_per_sec=p["result"]["batch_size"] / med,
                         min_ms=min(times[name]) * 1e3, max_ms=max(times[name]) * 1e3,
                         compile_seconds=p["compile_seconds"], step_memory_bytes=mem,
                         timed_steps=steps)
    if len(names) >= 2:
        out["ratio"] = out[names[0]]["median_ms"] / out[names[1]]["median_ms"]
    return out


def format_compare(r) -> str:
    names = [k for k in r if k != "ratio"]
    lines = []
    for name in names:
        v = r[name]
        mem = f"{v['step_memory_bytes'] / 2**20:.1f} MiB" if v["step_memory_bytes"] else "n/a"
        lines.append(f"  {name:<28} {v['median_ms']:9.2f} ms median of {v['timed_steps']} "
                     f"(min {v['min_ms']:.2f}, max {v['max_ms']:.2f}), "
                     f"{v['pairs_per_sec']:.1f} pairs/s, step memory {mem}")
    if "ratio" in r:
        lines.append(f"  step time {names[0]} / {names[1]} = {r['ratio']:.3f} "
                     f"(interleaved, one process)")
    return "\n".join(lines)


def out_of_memory_exit(error: BaseException, batch_size: int):
    """Exits with one sentence (code 1) when ``error`` is an out-of-memory error."""
    from barlow_jax.cli import fail, is_out_of_memory
    if not is_out_of_memory(error):
        return
    import re
    asked = re.search(r"allocat\w* ([\d.]+\s*(?:[KMGT]i?B|bytes))", str(error))
    import jax
    where = jax.devices()[0].device_kind if not isinstance(error, MemoryError) else "the host"
    fail(f"The benchmark ran out of memory at --config.batch_size={batch_size} on {where}"
         + (f" (it asked for {asked.group(1)})" if asked else "")
         + f"; rerun with a smaller batch, e.g. --config.batch_size={max(batch_size // 2, 1)}.",
         1, error)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    if f.fake_devices:  # before JAX is imported (it is imported lazily, in benchmark)
        if "jax" in sys.modules:
            raise RuntimeError("--fake_devices must be applied before JAX is imported.")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_"
                                   f"platform_device_count={f.fake_devices}").strip()
        os.environ["JAX_PLATFORMS"] = "cpu"
    if f.ab:
        b = f.config
        for a in f.ab:
            b = override(b, a)
        r = compare({"as configured": f.config, " ".join(f.ab): b}, steps=f.steps,
                    warmup=f.warmup)
        print(_head(r["as configured"]), flush=True)
        print(format_compare(r), flush=True)
        if f.json_out:
            with open(f.json_out, "a") as out:
                out.write(json.dumps(r) + "\n")
        return
    try:
        result = benchmark(f.config, steps=f.steps, warmup=f.warmup, peak_tflops=f.peak_tflops,
                           profile_steps=f.profile_steps, profile_dir=f.profile_dir,
                           collectives_only=f.collectives_only, compile_program=f.compile)
    except Exception as e:  # XLA RESOURCE_EXHAUSTED or MemoryError -> one sentence
        out_of_memory_exit(e, f.config.batch_size)
        raise
    print(format_result(result), flush=True)
    if f.json_out:
        with open(f.json_out, "a") as out:
            out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    from barlow_jax.cli import parse_flags
    define_flags()
    app.run(main, flags_parser=parse_flags)
