"""TFDS on several hosts (issue 9 item 7): each process reads only its slice of the
split (tfds.even_splits), deterministically and resumably (tfds.testing.mock_data)."""

import numpy as np
import pytest

from barlow_jax.data import pipeline as pl
from barlow_jax.parallel import make_mesh
from configs import base

tfds = pytest.importorskip("tensorflow_datasets")
N, BATCH, P = 40, 16, 2


def _config(tmp_path, placement):
    c = base.get_config().data
    c.source, c.tfds_name, c.placement, c.image_size = "tfds", "cifar10", placement, 32
    c.tfds_data_dir, c.shuffle_buffer = str(tmp_path), 64
    return c


def _batches(c, pi, steps, start_step=0):
    p = pl.create_pipeline(c, global_batch_size=BATCH, seed=1, mesh=make_mesh(),
                           start_step=start_step, process_index=pi, process_count=P)
    it = p.local_batches()
    return p, [next(it) for _ in range(steps)]


def test_each_process_reads_only_its_slice_deterministically_and_resumably(tmp_path,
                                                                          monkeypatch):
    c = _config(tmp_path, "split")
    asked = []
    real = pl.tfds_dataset
    monkeypatch.setattr(pl, "tfds_dataset", lambda dc, split, decode: (
        asked.append(split), real(dc, split, decode))[1])
    with tfds.testing.mock_data(num_examples=N):
        for pi in range(P):
            asked.clear()
            p, straight = _batches(c, pi, 4)
            # The process asked TFDS for its even split only, never the whole split.
            want = tfds.even_splits("train", n=P)[pi]
            assert [str(a) for a in asked] == [str(want)], asked
            assert p.steps_per_epoch == (N // P) // (BATCH // P) == 2
            # Example indices are global: they start at the slice's start (mock_data ignores
            # the slicing and yields N examples for any split, hence the spy above), and are
            # distinct within an epoch.
            ids = np.concatenate([b["index"] for b in straight[:2]])
            lo = pi * N // P
            assert ids.min() >= lo and ids.max() < lo + N and len(set(ids)) == len(ids)
            if pi:
                assert ids.max() >= N // P   # process 1's indices are offset by its slice
            again = _batches(c, pi, 4)[1]
            for a, b in zip(straight, again):
                np.testing.assert_array_equal(a["view1"], b["view1"])
            resumed = _batches(c, pi, 1, start_step=3)[1][0]
            for key in ("index", "view1", "view2"):
                np.testing.assert_array_equal(resumed[key], straight[3][key])
            # Epochs are reshuffled.
            assert not np.array_equal(straight[2]["index"], straight[0]["index"])
