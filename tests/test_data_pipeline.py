"""Pipeline order, resume, multi-process shards, placements, errors, TFDS, eval batches."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P
from PIL import Image

from barlow_jax import data as data_lib
from barlow_jax.data import evaluation, pipeline as pl
from configs import base
from tests.cli_helpers import ROOT

MESH = Mesh(np.array(jax.devices()), ("data",))
N, SIZE, BATCH = 44, 8, 16     # 2 steps per epoch, 12 examples dropped per epoch


def arrays_config(placement="host", n=N, size=SIZE):
    """Arrays source whose label is the example's index (identifies it in a batch)."""
    c = base.get_config().data
    c.source, c.placement, c.image_size = "arrays", placement, size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    c.arrays = {"train": (images, np.arange(n)), "test": (images[:10], np.arange(10) + 100)}
    return c


def host_batches(c, steps, start_step=0, **kw):
    p = pl.create_pipeline(c, global_batch_size=BATCH, seed=3, mesh=MESH, start_step=start_step,
                           **kw)
    it = p.local_batches()
    out = [next(it) for _ in range(steps)]
    p.close()
    return out


def test_local_indices_two_processes_disjoint_and_cover_epoch():
    rows = [pl.process_rows(MESH, BATCH, p, 2) for p in range(2)]
    assert rows == [(0, 8), (8, 16)]
    parts = [pl.local_epoch_indices(N, BATCH, 3, 5, 0, r) for r in rows]
    assert not set(parts[0]) & set(parts[1])
    both = np.concatenate(parts)
    assert len(both) == len(set(both)) == (N // BATCH) * BATCH
    # Together they are exactly the single-process order of the epoch, step by step.
    whole = pl.local_epoch_indices(N, BATCH, 3, 5, 0, (0, BATCH)).reshape(-1, BATCH)
    np.testing.assert_array_equal(np.concatenate([parts[0].reshape(-1, 8), parts[1].reshape(
        -1, 8)], axis=1), whole)
    assert pl.process_rows(MESH, BATCH) == (0, BATCH)   # one real process holds all rows


@pytest.mark.parametrize("placement", ["host", "split"])
def test_resume_equals_uninterrupted_run(placement):
    c = arrays_config(placement)
    straight = host_batches(c, 5)
    for k in (1, 3):         # mid first epoch, mid second epoch
        resumed = host_batches(c, 5 - k, start_step=k)
        for a, b in zip(straight[k:], resumed):
            for key in ("view1", "view2", "label"):
                np.testing.assert_array_equal(a[key], b[key])
    # An epoch visits distinct examples; epochs are reshuffled; views differ per epoch.
    labels = [b["label"] for b in straight]
    epoch0 = np.concatenate(labels[:2])
    assert len(set(epoch0)) == 2 * BATCH
    assert not np.array_equal(epoch0, np.concatenate(labels[2:4]))
    assert not np.allclose(straight[0]["view1"], straight[0]["view2"])
    # The same example is augmented differently in the next epoch (32 of 44 per epoch:
    # at least 20 examples are in both).
    where = {}
    for step, b in enumerate(straight[:4]):
        for row, label in enumerate(b["label"]):
            where.setdefault(int(label), []).append((step, row))
    both = [v for v in where.values() if len(v) == 2]
    assert len(both) >= 20
    for (s0, r0), (s1, r1) in both:
        assert not np.array_equal(straight[s0]["view1"][r0], straight[s1]["view1"][r1])


def test_two_simulated_processes_build_the_global_batch():
    c = arrays_config("host")
    whole = host_batches(c, 3)
    parts = [host_batches(c, 3, process_index=p, process_count=2) for p in range(2)]
    for step in range(3):
        a, b = parts[0][step], parts[1][step]
        assert not set(a["label"]) & set(b["label"])
        for key in ("label", "view1"):
            np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), whole[step][key])


def test_host_batches_are_global_arrays_and_views_normalised():
    c = arrays_config("host")
    p = pl.create_pipeline(c, global_batch_size=BATCH, seed=0, mesh=MESH)
    batch = next(p)
    assert batch["view1"].shape == (BATCH, SIZE, SIZE, 3) and batch["view1"].dtype == np.float32
    assert batch["view1"].sharding.spec == P("data")
    assert p.device_data is None and p.steps_per_epoch == N // BATCH
    assert p.num_examples == 2 * BATCH and p.stats() == {"skipped_images": 0}
    v1, v2 = p.make_views(batch, None, jax.random.key(0))
    assert v1 is batch["view1"]
    x = np.asarray(v1) * np.asarray(c.std) + np.asarray(c.mean)
    assert x.min() >= -1e-5 and x.max() <= 1 + 1e-5


def _views_under_shard_map(p, batch):
    f = jax.jit(jax.shard_map(lambda b, d, k: p.make_views(b, d, k[0]), mesh=MESH,
                              in_specs=(P("data"), P("data"), P("data")), out_specs=P("data")))
    keys = jax.random.split(jax.random.key(1), len(jax.devices()))
    return f(batch, p.device_data, keys)


@pytest.mark.parametrize("placement", ["split", "device"])
def test_make_views_under_shard_map(placement):
    c = arrays_config(placement, size=16)
    c.image_size = 12                       # views may differ from the stored size
    p = pl.create_pipeline(c, global_batch_size=BATCH, seed=0, mesh=MESH)
    batch = next(p)
    v1, v2 = _views_under_shard_map(p, batch)
    assert v1.shape == v2.shape == (BATCH, 12, 12, 3) and v1.dtype == np.float32
    v1 = np.asarray(v1)
    assert np.isfinite(v1).all() and not np.allclose(v1, np.asarray(v2))
    # Every device drew its own randomness: no two devices' views are equal.
    per_dev = v1.reshape(len(jax.devices()), -1)
    assert len({row.tobytes() for row in per_dev}) == len(per_dev)


def test_device_pipeline_order_and_resume():
    c = arrays_config("device", n=70)
    p = pl.create_pipeline(c, global_batch_size=BATCH, seed=2, mesh=MESH)
    assert p.steps_per_epoch == 70 // BATCH
    labels = np.asarray(p.device_data["labels"])   # label == original index
    assert labels.shape == (len(jax.devices()), 70) and (labels == np.arange(70)).all()
    spe = p.steps_per_epoch
    idx = np.stack([np.asarray(next(p)["idx"]) for _ in range(spe + 2)])
    # Within an epoch the global batches visit distinct examples.
    assert len(set(idx[:spe].reshape(-1))) == spe * BATCH and idx.max() < 70
    resumed = pl.create_pipeline(c, global_batch_size=BATCH, seed=2, mesh=MESH, start_step=3)
    for k in range(3, spe + 2):
        np.testing.assert_array_equal(np.asarray(next(resumed)["idx"]), idx[k])
        np.testing.assert_array_equal(resumed.indices(k), idx[k])


def test_synthetic_device_path_runs_without_tensorflow():
    code = ("import sys; sys.modules['tensorflow'] = None; sys.path.insert(0, %r)\n"
            "import jax, numpy as np\n"
            "from configs import smoke\n"
            "from barlow_jax.data import create_pipeline, eval_batches, load_eval_arrays\n"
            "c = smoke.get_config()\n"
            "m = jax.sharding.Mesh(np.array(jax.devices()), ('data',))\n"
            "p = create_pipeline(c.data, global_batch_size=32, seed=0, mesh=m)\n"
            "v = p.make_views(next(p), p.device_data, jax.random.key(0))\n"
            "b = next(eval_batches(c.data, 'test', batch_size=8))\n"
            "print(v[0].shape, b['image'].shape, load_eval_arrays(c.data, 'test')[0].shape)\n"
            % ROOT)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(32, 16, 16, 3) (8, 16, 16, 3) (128, 16, 16, 3)" in out.stdout


def test_auto_placement_and_bad_settings():
    assert pl.resolve_placement("auto") == "host"          # tests run on the CPU backend
    c = arrays_config("auto")
    assert isinstance(pl.create_pipeline(c, global_batch_size=BATCH, seed=0, mesh=MESH),
                      pl.HostPipeline)
    cases = [
        (dict(placement="gpu"), {}, "placement='gpu' is unknown"),
        (dict(source="csv"), {}, "source='csv' is unknown"),
        ({}, dict(global_batch_size=12), "does not divide evenly over 8 devices; set it to a multiple of 8"),
        ({}, dict(global_batch_size=48), "fewer than one global batch of 48"),
    ]
    for overrides, kw, message in cases:
        c = arrays_config("host")
        c.update(overrides)
        args = dict(global_batch_size=BATCH, seed=0, mesh=MESH)
        args.update(kw)
        with pytest.raises(ValueError, match=message):
            pl.create_pipeline(c, **args)
    c = arrays_config("device")
    with pytest.raises(ValueError, match="fewer than one global batch"):
        pl.create_pipeline(c, global_batch_size=48, seed=0, mesh=MESH)
    c.arrays = {"train": (np.zeros((20, 4, 4, 3), np.float32), np.arange(20))}
    with pytest.raises(ValueError, match="dtype uint8"):
        pl.create_pipeline(c, global_batch_size=BATCH, seed=0, mesh=MESH)
    with pytest.raises(ValueError, match="no 'test' entry"):
        data_lib.num_examples(c, "test")


# ----------------------------------------------------------------- evaluation batches

def test_eval_batches_cover_split_once():
    c = arrays_config(size=32)
    batches = list(data_lib.eval_batches(c, "train", batch_size=10))
    assert [len(b["label"]) for b in batches] == [10, 10, 10, 10, 4]
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), np.arange(N))
    # 32-pixel data: the test transform is the identity.
    images = c.arrays["train"][0]
    x = batches[0]["image"] * np.asarray(c.std) + np.asarray(c.mean)
    np.testing.assert_allclose(x * 255, images[:10], atol=1e-3)
    assert batches[0]["image"].dtype == np.float32 and batches[0]["label"].dtype == np.int32
    assert data_lib.num_examples(c, "train") == N
    # Process shards: disjoint, together the split.
    shards = [np.concatenate([b["label"] for b in data_lib.eval_batches(
        c, "train", batch_size=8, process_index=p, process_count=3)]) for p in range(3)]
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(N))


def test_eval_batches_train_mode_is_seeded_per_epoch():
    c = arrays_config(size=32)
    run = lambda epoch: list(data_lib.eval_batches(c, "train", batch_size=16, mode="train",
                                                   seed=1, epoch=epoch))
    a, b, other = run(0), run(0), run(1)
    labels = np.concatenate([x["label"] for x in a])
    np.testing.assert_array_equal(labels, pl.epoch_permutation(1, 0, N))
    np.testing.assert_array_equal(a[0]["image"], b[0]["image"])
    assert not np.array_equal(labels, np.concatenate([x["label"] for x in other]))
    subset = np.array([5, 9, 30])
    got = np.concatenate([x["label"] for x in data_lib.eval_batches(
        c, "train", batch_size=2, mode="train", seed=1, epoch=0, indices=subset)])
    np.testing.assert_array_equal(np.sort(got), subset)


def test_eval_test_mode_resizes_and_centre_crops_large_images():
    """image_size 96 > 64: Resize(110) + CenterCrop(96), bilinear, like torchvision's
    defaults (PIL reference on a 120x150 image: the long side int(110 * 150 / 120) = 137,
    truncated as torchvision does, and the crop's left edge round(41 / 2) = 20)."""
    img = np.asarray(Image.fromarray(np.random.default_rng(0).integers(
        0, 256, (12, 15, 3), dtype=np.uint8)).resize((150, 120), Image.BICUBIC))
    ref = np.asarray(Image.fromarray(img).resize((137, 110), Image.BILINEAR))[7:103, 20:116]
    got = evaluation.transform(img, 96, "test")
    np.testing.assert_array_equal(got, ref)
    rng = np.random.default_rng(0)
    out = evaluation.transform(img, 96, "train", rng)
    assert out.shape == (96, 96, 3)


# ----------------------------------------------------------------- TFDS

def test_tfds_source_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    c = base.get_config().data
    c.source, c.tfds_name, c.placement, c.image_size = "tfds", "cifar10", "host", 32
    c.tfds_data_dir, c.shuffle_buffer = str(tmp_path), 64
    with tfds.testing.mock_data(num_examples=40):
        assert data_lib.num_examples(c, "train") == 40
        p = pl.create_pipeline(c, global_batch_size=BATCH, seed=1, mesh=MESH)
        assert p.steps_per_epoch == 2
        it = p.local_batches()
        straight = [next(it) for _ in range(4)]
        assert straight[0]["view1"].shape == (BATCH, 32, 32, 3)
        resumed = pl.create_pipeline(c, global_batch_size=BATCH, seed=1, mesh=MESH,
                                     start_step=3).local_batches()
        np.testing.assert_array_equal(next(resumed)["view2"], straight[3]["view2"])
        sizes = [len(b["label"]) for b in data_lib.eval_batches(c, "test", batch_size=16)]
        assert sizes == [16, 16, 8]
        images, labels = data_lib.load_eval_arrays(c, "test")
        assert images.shape == (40, 32, 32, 3) and images.dtype == np.uint8
        c.placement = "device"
        p = pl.create_pipeline(c, global_batch_size=BATCH, seed=1, mesh=MESH)
        assert p.device_data["images"].shape == (len(jax.devices()), 40, 32, 32, 3)


def test_preview_writes_a_grid(tmp_path):
    from barlow_jax.data import preview
    from configs import smoke
    out = preview.write_preview(smoke.get_config(), str(tmp_path / "v.png"), num=3, cell=32)
    with Image.open(out) as im:
        assert im.size == (3 * 32 + 16, 18 + 3 * 36 + 4)
