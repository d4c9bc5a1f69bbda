"""Data faults: a truncated archive and an image replaced in place (docs/faults.md)."""

import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from barlow_jax.data import folder
from test_data_folder import _jpeg_bytes, folder_config, make_tree


def test_truncated_archive_is_one_sentence_and_leaves_no_partial(tmp_path):
    root = make_tree(tmp_path / "src" / "DATA", odd=False)
    path = tmp_path / "data.tar.gz"
    with tarfile.open(path, "w:gz") as t:
        t.add(root, arcname="DATA")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a download cut off half way
    cache = tmp_path / "cache"
    with pytest.raises(ValueError) as e:
        folder.index_split(folder_config(path, cache), "train")
    msg = str(e.value)
    assert "damaged archive" in msg and "download or copy it again" in msg
    assert "\n" not in msg
    extracted = cache / "extracted"
    assert not extracted.exists() or os.listdir(extracted) == []  # no partial, no "done" dir
    path.write_bytes(data)  # fixed archive: the rerun extracts and indexes it
    assert folder.index_split(folder_config(path, cache), "train").num_examples == 12


def test_image_replaced_in_place_rebuilds_index_and_decoded_cache(tmp_path):
    root = make_tree(tmp_path / "data", odd=False)
    c = folder_config(root, tmp_path / "cache")
    target = os.path.join(root, "train", "ant", "002.jpg")
    with open(target, "wb") as f:   # unreadable at first
        f.write(b"not a jpeg at all")
    index = folder.index_split(c, "train")
    assert index.num_examples == 11 and any(p == target for p, _ in index.skipped)
    images, _ = folder.decoded_arrays(c, "train", index)
    old_pixels = np.array(images)
    del images
    dirs = [os.path.join(root, "train", d) for d in ("ant", "bird")] + [os.path.join(root, "train")]
    times = {d: os.stat(d).st_mtime_ns for d in dirs}
    with open(target, "wb") as f:   # fixed in place: same name, folders untouched
        f.write(_jpeg_bytes(42))
    for d, t in times.items():      # the folder times stay as they were (an in-place write)
        os.utime(d, ns=(t, t))
    index2 = folder.index_split(c, "train")
    assert index2.num_examples == 12 and not index2.skipped
    images2, _ = folder.decoded_arrays(c, "train", index2)
    i = list(index2.paths).index(target)
    np.testing.assert_array_equal(images2[i], np.asarray(Image.open(target).convert("RGB")))
    assert images2.shape[0] == old_pixels.shape[0] + 1
    decoded = os.listdir(tmp_path / "cache" / "decoded")
    assert len([f for f in decoded if f.endswith(".labels.npy")]) == 1  # the stale copy is gone

    # Same size, new pixels: the decoded copy follows the file, not the old array.
    before = np.array(images2[i])
    with open(target, "wb") as f:
        f.write(_jpeg_bytes(43))
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    for d, t in times.items():
        os.utime(d, ns=(t, t))
    images3, _ = folder.decoded_arrays(c, "train", folder.index_split(c, "train"))
    assert not np.array_equal(images3[i], before)
    np.testing.assert_array_equal(images3[i], np.asarray(Image.open(target).convert("RGB")))


def test_full_cache_disk_while_extracting_is_one_sentence(tmp_path, monkeypatch):
    import errno
    root = make_tree(tmp_path / "src" / "DATA", odd=False)
    path = tmp_path / "data.tar.gz"
    with tarfile.open(path, "w:gz") as t:
        t.add(root, arcname="DATA")
    real = tarfile.TarFile.extractall

    def full(self, dest, *a, **k):   # half the files land, then the disk is full
        os.makedirs(os.path.join(dest, "DATA"), exist_ok=True)
        with open(os.path.join(dest, "DATA", "part"), "wb") as f:
            f.write(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "extractall", full)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError) as e:
        folder.index_split(folder_config(path, cache), "train")
    msg = str(e.value)
    assert msg.startswith(f"Could not extract {path}") and "No space left on device" in msg
    assert "config.data.cache_dir" in msg and "\n" not in msg
    assert os.listdir(cache / "extracted") == []     # no partial tree left behind
    monkeypatch.setattr(tarfile.TarFile, "extractall", real)
    assert folder.index_split(folder_config(path, cache), "train").num_examples == 12
