"""Folder source: archives, the index cache, bad and odd files, errors, real CIFAR-10 JPEGs."""

import io
import logging
import os
import tarfile

import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from PIL import Image

from barlow_jax import data as data_lib
from barlow_jax.data import archive, folder, pipeline as pl
from configs import base

MESH = Mesh(np.array(jax.devices()), ("data",))
BAD = ("corrupt.jpg", "truncated.jpg", "empty.png")


def _photo(seed, mode="RGB", size=20):
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).resize(
        (size, size), Image.BICUBIC)
    return im.convert(mode)


def _jpeg_bytes(seed):
    buf = io.BytesIO()
    _photo(seed).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_tree(root, n_per_class=6, odd=True):
    """<root>/{train,test}/{ant,bird}/ with good JPEGs, odd formats and broken files."""
    for split in ("train", "test"):
        for c, cls in enumerate(("bird", "ant")):      # created unsorted on purpose
            d = os.path.join(root, split, cls)
            os.makedirs(d)
            for i in range(n_per_class):
                with open(os.path.join(d, f"{i:03d}.jpg"), "wb") as f:
                    f.write(_jpeg_bytes(100 * c + i))
    ant = os.path.join(root, "train", "ant")
    if odd:
        _photo(1, "L").save(os.path.join(ant, "gray.jpg"))
        _photo(2).convert("P", palette=Image.ADAPTIVE).save(os.path.join(ant, "palette.png"))
        _photo(3, "RGBA").save(os.path.join(ant, "rgba.png"))
        _photo(4, "CMYK").save(os.path.join(ant, "cmyk.JPEG"))
        with open(os.path.join(ant, "corrupt.jpg"), "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 this is not a jpeg" * 3)
        with open(os.path.join(ant, "truncated.jpg"), "wb") as f:
            f.write(_jpeg_bytes(7)[:300])
        open(os.path.join(ant, "empty.png"), "wb").close()
        with open(os.path.join(ant, "notes.txt"), "w") as f:
            f.write("not an image")
        _photo(5).save(os.path.join(ant, ".hidden.jpg"))
    return root


def folder_config(path, cache, placement="host", size=16):
    c = base.get_config().data
    c.source, c.path, c.cache_dir, c.placement, c.image_size = "folder", str(path), str(
        cache), placement, size
    return c


def test_index_labels_skips_bad_and_converts_odd_files(tmp_path, caplog):
    root = make_tree(tmp_path / "data")
    c = folder_config(root, tmp_path / "cache")
    with caplog.at_level(logging.WARNING):
        index = folder.index_split(c, "train")
    assert index.classes == ["ant", "bird"]
    assert index.num_examples == 2 * 6 + 4 and len(index.skipped) == 3
    for name in BAD:   # each bad file is named in a warning
        assert any(name in r.getMessage() for r in caplog.records), name
    assert sorted(os.path.basename(p) for p, _ in index.skipped) == sorted(BAD)
    names = [os.path.basename(p) for p in index.paths]
    assert "notes.txt" not in names and ".hidden.jpg" not in names and "gray.jpg" in names
    np.testing.assert_array_equal(index.labels, [0] * 10 + [1] * 6)
    # Palette, RGBA and CMYK files were converted to RGB PNGs in the cache; every indexed
    # file now decodes to the same RGB pixels with PIL and with TensorFlow.
    converted = [p for p in index.paths if p.startswith(str(tmp_path / "cache"))]
    assert len(converted) == 3
    tf = pytest.importorskip("tensorflow")
    from barlow_jax.data import augment_tf
    for path in index.paths:
        pil = folder.read_rgb(path)
        assert pil.shape == (20, 20, 3)
        tfd = augment_tf.decode(tf.io.read_file(path)).numpy()
        np.testing.assert_array_equal(tfd, pil, err_msg=path)
    originals = {"palette.png": "P", "rgba.png": "RGBA", "cmyk.JPEG": "CMYK"}
    for name in originals:
        with Image.open(os.path.join(root, "train", "ant", name)) as im:
            want = np.asarray(im.convert("RGB"))
        assert any(np.array_equal(folder.read_rgb(p), want) for p in converted), name


def test_pipelines_on_folder_count_skipped(tmp_path):
    root = make_tree(tmp_path / "data")
    for placement in ("host", "split", "device"):
        c = folder_config(root, tmp_path / "cache", placement)
        p = pl.create_pipeline(c, global_batch_size=8, seed=0, mesh=MESH)
        assert p.stats() == {"skipped_images": 3}
        assert p.steps_per_epoch == 2
        batch = next(p)
        key = "idx" if placement == "device" else "view1"
        assert batch[key].shape[0] == 8
    assert p.device_data["images"].shape == (MESH.devices.size, 16, 20, 20, 3)  # one copy per device
    images, labels = data_lib.load_eval_arrays(c, "test")
    assert images.shape == (12, 20, 20, 3) and list(labels) == [0] * 6 + [1] * 6
    np.testing.assert_array_equal(images[0], folder.read_rgb(
        os.path.join(root, "test", "ant", "000.jpg")))


def test_index_is_cached_and_rebuilt_when_files_change(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "data", odd=False)
    c = folder_config(root, tmp_path / "cache")
    assert folder.index_split(c, "train").num_examples == 12

    def no_check(path):
        raise AssertionError("the cached index should have been used")

    monkeypatch.setattr(folder, "_check_image", no_check)
    assert folder.index_split(c, "train").num_examples == 12
    monkeypatch.undo()
    with open(os.path.join(root, "train", "bird", "new.jpg"), "wb") as f:
        f.write(_jpeg_bytes(99))
    assert folder.index_split(c, "train").num_examples == 13


def _archive(tmp_path, top="DATA-images"):
    root = make_tree(tmp_path / "src" / top, odd=False)
    path = tmp_path / "data.tar.gz"
    with tarfile.open(path, "w:gz") as t:
        t.add(root, arcname=top)
    return path


def test_archive_is_extracted_once_and_atomically(tmp_path, monkeypatch):
    path = _archive(tmp_path)
    cache = tmp_path / "cache"
    c = folder_config(path, cache)
    # An interrupted extraction leaves nothing that could pass for a complete one.
    parent = cache / "extracted"
    parent.mkdir(parents=True)
    real = tarfile.TarFile.extractall

    def interrupted(self, dest, *a, **k):
        real(self, dest, *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(tarfile.TarFile, "extractall", interrupted)
    with pytest.raises(KeyboardInterrupt):
        folder.index_split(c, "train")
    assert os.listdir(parent) == []
    monkeypatch.undo()
    index = folder.index_split(c, "train")
    assert index.num_examples == 12 and index.split_dir.endswith(os.path.join(
        "DATA-images", "train"))
    (done,) = os.listdir(parent)
    assert done.startswith("data-")

    def no_open(*a, **k):
        raise AssertionError("the archive should not be read again")

    monkeypatch.setattr(tarfile, "open", no_open)
    assert folder.index_split(c, "test").num_examples == 12


def test_stale_partial_extractions_are_removed(tmp_path):
    path = _archive(tmp_path)
    c = folder_config(path, tmp_path / "cache")
    name = archive.materialize(str(path), str(tmp_path / "cache"))
    parent = os.path.dirname(name)
    base_name = os.path.basename(name)
    dead = f".{base_name}.partial-{os.uname().nodename}-999999999-ab"
    alive = f".{base_name}.partial-{os.uname().nodename}-{os.getpid()}-cd"
    for d in (dead, alive):
        os.makedirs(os.path.join(parent, d, "junk"))
    archive._remove_stale_partials(parent, base_name)
    assert sorted(os.listdir(parent)) == sorted([base_name, alive])
    assert folder.index_split(c, "train").num_examples == 12


def test_clear_errors_for_bad_paths(tmp_path):
    cache = tmp_path / "cache"

    def err(path, split="train", batch=None):
        c = folder_config(path, cache)
        if batch:
            return pl.create_pipeline(c, global_batch_size=batch, seed=0, mesh=MESH)
        return folder.index_split(c, split)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        err(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is an empty folder"):
        err(tmp_path / "empty")
    (tmp_path / "noclass" / "train").mkdir(parents=True)
    (tmp_path / "noclass" / "train" / "a.jpg").write_bytes(_jpeg_bytes(0))
    assert (err(tmp_path / "noclass").labels == -1).all()  # unlabeled (tests/test_unlabeled.py)
    (tmp_path / "nothing" / "train").mkdir(parents=True)
    (tmp_path / "nothing" / "train" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="has no class subfolders and no images"):
        err(tmp_path / "nothing")
    (tmp_path / "noimg" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "noimg" / "train" / "cat" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="No .jpg/.jpeg/.png images"):
        err(tmp_path / "noimg")
    with pytest.raises(FileNotFoundError, match="No 'val' folder"):
        err(tmp_path / "noimg", split="val")
    (tmp_path / "file.zip").write_text("zip")
    with pytest.raises(ValueError, match="neither a directory nor a .tar"):
        err(tmp_path / "file.zip")
    small = make_tree(tmp_path / "small", n_per_class=2, odd=False)
    with pytest.raises(ValueError, match="4 usable images, fewer than one global batch of 8"):
        err(small, batch=8)


def test_real_cifar10_jpegs(tmp_path, cifar_archive):
    """A small tree of real CIFAR-10 JPEGs taken from the shared archive."""
    want = {("train", "airplane"): 10, ("train", "cat"): 10, ("test", "airplane"): 3,
            ("test", "cat"): 3}
    root = tmp_path / "cifar"
    with tarfile.open(cifar_archive) as t:
        for m in t:
            parts = m.name.split("/")
            if len(parts) == 4 and m.isfile() and want.get((parts[1], parts[2]), 0) > 0:
                want[(parts[1], parts[2])] -= 1
                dest = root / parts[1] / parts[2] / parts[3]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(t.extractfile(m).read())
            if not any(want.values()):
                break
    c = folder_config(root, tmp_path / "cache", size=32)
    c.mean, c.std = (0.4913, 0.4821, 0.4465), (0.2452, 0.2428, 0.2606)
    index = folder.index_split(c, "train")
    assert index.classes == ["airplane", "cat"] and index.num_examples == 20
    assert not index.skipped and set(map(tuple, index.sizes)) == {(32, 32)}
    batches = list(data_lib.eval_batches(c, "test", batch_size=4))
    assert [len(b["label"]) for b in batches] == [4, 2]
    first = sorted(os.listdir(root / "test" / "airplane"))[0]
    pixels = folder.read_rgb(str(root / "test" / "airplane" / first))
    x = batches[0]["image"][0] * np.asarray(c.std) + np.asarray(c.mean)
    np.testing.assert_allclose(x * 255, pixels, atol=1e-3)
    p = pl.create_pipeline(c, global_batch_size=8, seed=0, mesh=MESH)
    batch = next(p)
    assert batch["view1"].shape == (8, 32, 32, 3)
    assert set(np.asarray(batch["label"])) <= {0, 1}
