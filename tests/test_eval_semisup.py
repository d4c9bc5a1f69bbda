"""Semi-supervised fine-tuning: subsets, BN modes, learning, resume, file lists + large images."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from barlow_jax.eval import semisup


def colour_data(n, seed=0):
    """Images whose class is their (noisy) colour: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int32)
    colours = np.random.default_rng(99).uniform(0, 255, (10, 3))
    images = colours[labels][:, None, None, :] + rng.normal(0, 30, (n, 16, 16, 3))
    return np.clip(images, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def setup():
    from configs import smoke
    from barlow_jax.models import build_ssl_net
    config = smoke.get_config()
    images, labels = colour_data(384)
    config.data.source = "arrays"
    config.data.arrays = {"train": (images[:256], labels[:256]),
                          "test": (images[256:], labels[256:])}
    net = build_ssl_net(config)
    v = jax.jit(lambda k: net.init(k, jnp.zeros((2, 16, 16, 3))))(jax.random.key(0))
    return config, jax.tree.map(np.asarray, dict(v))


def settings(**kw):
    s = semisup.get_default_semisup_config()
    s.update(dict(epochs=3, batch_size=32, lr_backbone=0.05, lr_head=0.1, crop_scale=(0.5, 1.0)))
    s.update(kw)
    return s


def test_balanced_subset():
    labels = np.repeat(np.arange(4), [100, 50, 10, 1])
    idx = semisup.balanced_subset(labels, 0.1, seed=0)
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(np.bincount(labels[idx]), [10, 5, 1, 1])
    np.testing.assert_array_equal(idx, semisup.balanced_subset(labels, 0.1, seed=0))
    assert not np.array_equal(idx, semisup.balanced_subset(labels, 0.1, seed=1))
    with pytest.raises(ValueError, match="fraction"):
        semisup.balanced_subset(labels, 0.0, seed=0)


def test_bn_modes_and_frozen_backbone(mesh_of, setup):
    config, variables = setup
    images, labels = colour_data(16, seed=3)

    tuners = {bn: semisup.FineTuner(config, settings(bn=bn), mesh_of(8))
              for bn in ("train", "frozen")}

    def one_step(bn, lr_backbone):
        tuner = tuners[bn]
        params = {"backbone": variables["params"]["backbone"],
                  "head": {"kernel": np.full((64, 10), 0.01, np.float32),
                           "bias": np.zeros(10, np.float32)}}
        state = tuner.put({"p": params, "bs": variables["batch_stats"]["backbone"],
                           "buf": jax.tree.map(np.zeros_like, params)}, replicated=True)
        key = tuner.put(jax.random.key_data(jax.random.key(0)), replicated=True)
        lrs = tuner.put(np.array([lr_backbone, 0.1], np.float32), replicated=True)
        p, bs, _, loss = tuner.step(state["p"], state["bs"], state["buf"], tuner.put(images),
                                    tuner.put(labels), tuner.put(np.ones(16, np.float32)), key, lrs)
        changed = lambda a, b: any(not np.array_equal(x, y) for x, y in zip(
            jax.tree.leaves(a), jax.tree.leaves(b)))
        return (changed(bs, variables["batch_stats"]["backbone"]),
                changed(p["backbone"], params["backbone"]), changed(p["head"], params["head"]))

    assert one_step("train", 0.05) == (True, True, True)
    assert one_step("frozen", 0.05) == (False, True, True)
    assert one_step("train", 0.0) == (True, False, True)


def test_finetuning_learns_and_resumes_exactly(mesh_of, setup, tmp_path):
    config, variables = setup
    run = lambda d, **kw: semisup.run_semisup(
        str(d), settings(**kw), 0.5, config=config, variables=variables, pretrain_step=0,
        mesh=mesh_of(8), log=lambda s: None)
    straight = run(tmp_path / "a")
    expected = len(semisup.balanced_subset(config.data.arrays["train"][1], 0.5, seed=0))
    assert straight["setup"]["num_train"] == expected and straight["complete"]
    assert straight["final"]["top1"] > 50.0  # chance is 10%
    assert run(tmp_path / "b", stop_after_epochs=1)["complete"] is False
    resumed = run(tmp_path / "b")
    assert [h["epoch"] for h in resumed["epochs"]] == [1, 2, 3]
    for a, b in zip(straight["epochs"], resumed["epochs"]):
        assert (a["loss"], a["top1"], a["top5"]) == (b["loss"], b["top1"], b["top5"])
    saved = json.load(open(tmp_path / "b" / "semisup_eval.json"))
    assert list(saved) == ["50%"] and saved["50%"]["final"] == resumed["final"]


def test_subset_file_with_large_images(mesh_of, setup, tmp_path):
    """A folder tree of 72-px images: the listed files, streamed train-mode batches."""
    config, variables = setup
    rng = np.random.default_rng(0)
    names = []
    for c, cls in enumerate(("n01", "n02")):
        os.makedirs(tmp_path / "data" / "train" / cls)
        os.makedirs(tmp_path / "data" / "test" / cls)
        for i in range(6):
            img = np.clip(rng.normal(60 + 120 * c, 20, (72, 80, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "data" / "train" / cls / f"{cls}_{i}.png")
            names.append(f"{cls}_{i}.png")
            if i < 3:
                Image.fromarray(img).save(tmp_path / "data" / "test" / cls / f"{cls}_t{i}.png")
    listed = [names[1], names[4], names[7], names[11]]
    (tmp_path / "subset.txt").write_text("\n".join(listed) + "\n")
    cfg = config.copy_and_resolve_references()
    cfg.data.update(source="folder", path=str(tmp_path / "data"), image_size=72, num_classes=2,
                    cache_dir=str(tmp_path / "cache"))
    subset_file = str(tmp_path / "subset.txt")
    idx = semisup.subset_from_file(cfg.data, "train", subset_file)
    np.testing.assert_array_equal(idx, [1, 4, 7, 11])
    result = semisup.run_semisup(
        str(tmp_path / "run"), settings(epochs=1, batch_size=3, subset_file=subset_file), 0.01,
        config=cfg, variables=variables, pretrain_step=0, mesh=mesh_of(2), log=lambda s: None)
    assert result["complete"] and result["setup"]["num_train"] == 4
    assert result["setup"]["lr_backbone"] == 0.05 and "subset.txt" in result["setup"]["subset"]
    cfg.data.num_classes = 1000
    with pytest.raises(ValueError, match="subset_file"):
        semisup.run_semisup(str(tmp_path / "run2"), settings(), 0.01, config=cfg,
                            variables=variables, pretrain_step=0, mesh=mesh_of(2))


def test_default_backbone_lr_follows_the_fraction():
    assert semisup.default_lr_backbone(0.01) == 0.005   # current official README
    assert semisup.default_lr_backbone(0.1) == 0.005
