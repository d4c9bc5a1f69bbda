"""Input-pipeline throughput, per placement, at the config's size and at 224.

    python -m barlow_jax.data.bench --config=configs/bt_cifar10.py [--sizes=224,32]
        [--placements=host,split,device] [--batch=128] [--steps=8]

For each size and placement it prints the host pipeline's image pairs/s
(wall clock) and pairs per CPU-second this process used (the per-core rate,
robust to other jobs on the machine) and, for 'split' and 'device', the
pairs/s of the jitted JAX half (``make_views``) on JAX's default backend.

* 32 (or any size other than 224): ``config.data`` as given, at that size.
* 224: ImageNet's augmentation (base config, blur 1.0 / 0.1) on synthetic
  JPEGs written to a temporary folder (``--jpegs`` files, quality 90, sizes
  500x375, 375x500, 500x333 and 400x400 like typical ImageNet photos), read
  through the folder source. Placement 'device' keeps them as 256x256 squares.
"""

from __future__ import annotations

import os
import tempfile
import time


import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from PIL import Image  # noqa: E402


def define_flags():
    """The command-line flags; defined only when the module runs as a program."""
    config_flags.DEFINE_config_file("config", None,
                                    "Experiment config file (its data is the small-size case).")
    flags.DEFINE_list("sizes", ["224", "32"], "Output view sizes to measure.")
    flags.DEFINE_list("placements", ["host", "split", "device"], "Placements to measure.")
    flags.DEFINE_integer("batch", 128, "Image pairs per batch.")
    flags.DEFINE_integer("steps", 8, "Timed batches (after --warmup).")
    flags.DEFINE_integer("warmup", 3, "Untimed batches first (compilation, prefetch).")
    flags.DEFINE_integer("jpegs", 512, "Synthetic JPEGs for the 224 case.")

JPEG_SIZES = ((375, 500), (500, 375), (333, 500), (400, 400))


def write_synthetic_jpegs(root: str, n: int, seed: int = 0) -> str:
    """n smooth random photos-like JPEGs in <root>/train/c<k>/, returns root."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = JPEG_SIZES[i % len(JPEG_SIZES)]
        coarse = rng.integers(0, 256, (h // 32, w // 32, 3), dtype=np.uint8)
        im = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.float32)
        im = np.clip(im + rng.normal(0, 12, im.shape), 0, 255).astype(np.uint8)
        d = os.path.join(root, "train", f"c{i % 10}")
        os.makedirs(d, exist_ok=True)
        Image.fromarray(im).save(os.path.join(d, f"{i:05d}.jpg"), quality=90)
    return root


def data_config_for(size: int, config, tmp: str):
    if size != 224:
        dc = config.data
        dc.image_size = size
        return dc
    from barlow_jax import defaults as base
    dc = base.get_config().data
    dc.path = write_synthetic_jpegs(os.path.join(tmp, "jpegs"), flags.FLAGS.jpegs)
    dc.cache_dir = os.path.join(tmp, "cache")
    return dc


def _rate(fn, batch: int, steps: int, warmup: int):
    """(pairs per wall second, pairs per CPU second of this process) of ``fn``."""
    for _ in range(warmup):
        fn()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        fn()
    return (steps * batch / (time.perf_counter() - wall),
            steps * batch / (time.process_time() - cpu))


def measure(dc, placement: str, batch: int, steps: int, warmup: int):
    """((host pairs/s, per CPU-s), JAX-half pairs/s or None) of one placement."""
    import jax
    from barlow_jax.data.pipeline import create_pipeline
    dc.placement = placement
    from barlow_jax import parallel
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    pipe = create_pipeline(dc, global_batch_size=batch, seed=0, mesh=mesh)
    key = jax.random.key(0)
    if placement == "device":
        host = _rate(lambda: jax.block_until_ready(next(pipe)), batch, steps, warmup)
        b = next(pipe)
        views = jax.jit(lambda b, d, k: pipe.make_views(b, d, k))
        accel = _rate(lambda: jax.block_until_ready(views(b, pipe.device_data, key)),
                      batch, max(2, steps // 4), 1)[0]
        return host, accel
    batches = pipe.local_batches()
    host = _rate(lambda: next(batches), batch, steps, warmup)
    accel = None
    if placement == "split":
        b = jax.device_put(next(batches))
        views = jax.jit(lambda b, k: pipe.make_views(b, None, k))
        accel = _rate(lambda: jax.block_until_ready(views(b, key)), batch,
                      max(2, steps // 4), 1)[0]
    pipe.close()
    return host, accel


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
    import jax
    f = flags.FLAGS
    if f.config is None and any(int(s) != 224 for s in f.sizes):
        raise app.UsageError("--config is required for sizes other than 224.")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPU cores: {cores}; JAX backend for the JAX half: {jax.default_backend()}; "
          f"batch {f.batch} pairs, {f.steps} timed batches after {f.warmup}")
    print(f"{'size':>5} {'placement':>9} {'host pairs/s':>13} {'per CPU-s':>10} "
          f"{'JAX-half pairs/s':>17}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in f.sizes):
            dc = data_config_for(size, f.config, tmp)
            for placement in f.placements:
                (host, per_cpu), accel = measure(dc, placement, f.batch, f.steps, f.warmup)
                extra = f"{accel:17.0f}" if accel is not None else f"{'-':>17}"
                print(f"{size:5d} {placement:>9} {host:13.0f} {per_cpu:10.0f} {extra}",
                      flush=True)


if __name__ == "__main__":
    from barlow_jax.cli import parse_flags
    define_flags()
    app.run(main, flags_parser=parse_flags)
