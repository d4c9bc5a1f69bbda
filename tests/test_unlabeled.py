"""A folder split without class subfolders trains (labels -1); labelled uses say what they need.

The tree is generated: ``train/*.png`` (unlabeled), ``test/<a|b>/*.png`` (labelled).
"""

import numpy as np
import pytest
from PIL import Image

from barlow_jax.data import folder
from barlow_jax.train import train_and_evaluate
from configs import smoke


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("unlabeled")
    rng = np.random.default_rng(0)
    (root / "train").mkdir()
    for i in range(64):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            root / "train" / f"{i:03d}.png")
    for c, mean in (("a", 60), ("b", 190)):
        (root / "test" / c).mkdir(parents=True)
        for i in range(16):
            img = np.clip(rng.normal(mean, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / "test" / c / f"{i:03d}.png")
    return root


def _config(root, cache):
    c = smoke.get_config()
    c.model.width = 4
    c.projector.spec = "32-16"
    c.batch_size = 16
    c.num_train_steps = 2
    c.log_every_steps = 1
    c.checkpoint_every_steps = 2
    c.data.source = "folder"
    c.data.path = str(root)
    c.data.cache_dir = str(cache)
    c.data.placement = "device"
    c.data.num_classes = 2
    c.eval.knn_k = 5
    return c


def test_index_has_minus_one_labels(tree, tmp_path):
    c = _config(tree, tmp_path / "cache")
    index = folder.index_split(c.data, "train")
    assert index.classes == [] and index.num_examples == 64
    assert np.all(index.labels == -1)
    test = folder.index_split(c.data, "test")
    assert test.classes == ["a", "b"] and sorted(set(test.labels.tolist())) == [0, 1]


def test_empty_split_named(tmp_path):
    (tmp_path / "root" / "train").mkdir(parents=True)
    (tmp_path / "root" / "train" / "notes.txt").write_text("x")
    c = _config(tmp_path / "root", tmp_path / "cache")
    with pytest.raises(ValueError, match="no class subfolders and no images"):
        folder.index_split(c.data, "train")


def test_unlabeled_trains_and_knn_needs_labelled_split(tree, tmp_path):
    c = _config(tree, tmp_path / "cache")
    c.eval_every_steps = 2
    with pytest.raises(ValueError, match="'train' has no class labels.*knn_train_split"):
        train_and_evaluate(c, str(tmp_path / "w0"))
    c.online_probe.enabled = True
    with pytest.raises(ValueError, match="unlabeled folder.*online_probe.enabled=False"):
        train_and_evaluate(c, str(tmp_path / "w1"))
    c.online_probe.enabled = False
    c.eval.knn_train_split = "test"     # the labelled split fits the kNN monitor
    record = train_and_evaluate(c, str(tmp_path / "w2"))
    assert record["step"] == 2 and np.isfinite(record["loss"])
    assert 0.0 <= record["knn_top1"] <= 100.0


def test_linear_probe_and_semisup_need_a_labelled_split(tree, tmp_path):
    """eval.linear / eval.semisup pointed at the unlabeled split: one sentence, nothing trained."""
    import os
    from barlow_jax.eval import linear, semisup
    from tests.cli_helpers import write_untrained_run
    c = _config(tree, tmp_path / "cache")
    os.makedirs(tmp_path / "run")
    work = write_untrained_run(str(tmp_path / "run"), 1, c)
    lin = linear.get_default_linear_config()
    lin.epochs, lin.batch_size = 1, 16
    with pytest.raises(ValueError, match="'train' has no class labels .*labelled split"):
        linear.run_linear_eval(work, lin, log=lambda s: None)
    semi = semisup.get_default_semisup_config()
    semi.epochs, semi.batch_size = 1, 16
    with pytest.raises(ValueError, match="'train' has no class labels .*labelled split"):
        semisup.run_semisup(work, semi, 0.5, log=lambda s: None)
    assert not os.path.exists(tmp_path / "run" / "semisup_eval.json")
    assert not os.path.exists(tmp_path / "run" / "linear_eval.json")
