"""kNN classifier vs a brute-force NumPy reference; sharded embedding; the monitor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from barlow_jax.data import normalize
from barlow_jax.eval import features as feats_lib
from barlow_jax.eval import knn


def numpy_knn(train, train_labels, test, *, k, temperature, num_classes):
    """The InstDisc weighted vote, written directly (float64, stable tie-breaks)."""
    tr = train / np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-12)
    te = test / np.maximum(np.linalg.norm(test, axis=1, keepdims=True), 1e-12)
    sim = te.astype(np.float64) @ tr.astype(np.float64).T
    k = min(k, len(train))
    ranked = []
    for row in sim:
        nn_idx = np.argsort(-row, kind="stable")[:k]
        scores = np.zeros(num_classes)
        np.add.at(scores, train_labels[nn_idx], np.exp(row[nn_idx] / temperature))
        ranked.append(np.argsort(-scores, kind="stable")[:min(5, num_classes)])
    return np.stack(ranked)


def numpy_accuracy(ranked, labels):
    return (100.0 * np.mean(ranked[:, 0] == labels),
            100.0 * np.mean(np.any(ranked == labels[:, None], axis=1)))


@pytest.mark.parametrize("n_dev,k,num_classes", [(8, 20, 10), (8, 200, 10), (1, 50, 3)])
def test_knn_matches_numpy(mesh_of, n_dev, k, num_classes):
    rng = np.random.default_rng(k + num_classes)
    centers = rng.normal(size=(num_classes, 16))
    train_labels = rng.integers(0, num_classes, 203).astype(np.int32)
    test_labels = rng.integers(0, num_classes, 77).astype(np.int32)
    train = (centers[train_labels] + 1.5 * rng.normal(size=(203, 16))).astype(np.float32)
    test = (centers[test_labels] + 1.5 * rng.normal(size=(77, 16))).astype(np.float32)
    ranked = knn.knn_predict(train, train_labels, test, k=k, temperature=0.1,
                             num_classes=num_classes, chunk_size=32, mesh=mesh_of(n_dev))
    ref = numpy_knn(train, train_labels, test, k=k, temperature=0.1, num_classes=num_classes)
    np.testing.assert_array_equal(ranked, ref)
    acc = knn.knn_accuracy(ranked, test_labels)
    top1, top5 = numpy_accuracy(ref, test_labels)
    assert acc["top1"] == pytest.approx(top1) and acc["top5"] == pytest.approx(top5)
    assert 100.0 / num_classes < acc["top1"] < 100.0  # the classes are learnable, not trivial


def test_knn_device_count_invariant_and_rejects_bad_labels(mesh_of):
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(50, 8)), rng.normal(size=(30, 8))
    labels = rng.integers(0, 4, 50)
    a = knn.knn_predict(train, labels, test, k=7, num_classes=4, mesh=mesh_of(1))
    b = knn.knn_predict(train, labels, test, k=7, num_classes=4, mesh=mesh_of(8), chunk_size=8)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="num_classes"):
        knn.knn_predict(train, labels, test, k=7, num_classes=3, mesh=mesh_of(1))


@pytest.fixture(scope="module")
def smoke():
    from configs import smoke as smoke_cfg
    from barlow_jax.models import build_ssl_net
    config = smoke_cfg.get_config()
    config.eval.knn_train_examples = 96
    config.eval.knn_test_examples = 40
    config.eval.batch_size = 32
    net = build_ssl_net(config)
    size = config.data.image_size
    variables = jax.jit(lambda k: net.init(k, jnp.zeros((2, size, size, 3))))(jax.random.key(0))
    return config, jax.tree.map(np.asarray, dict(variables))


def test_embedder_equals_unsharded_apply(mesh_of, smoke):
    from barlow_jax.models import build_backbone
    config, variables = smoke
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (37, 16, 16, 3)).astype(np.uint8)
    feats8 = feats_lib.Embedder(config, mesh_of(8), batch_size=16).features(variables, images)
    feats1 = feats_lib.Embedder(config, mesh_of(1), batch_size=64).features(variables, images)
    mean, std = normalize.mean_std(config.data)
    x = (images.astype(np.float32) / 255.0 - mean) / std
    ref = build_backbone(config).apply(feats_lib.backbone_variables(variables), x, train=False)
    assert feats8.shape == (37, ref.shape[1])
    np.testing.assert_allclose(feats8, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats1, ref, rtol=1e-4, atol=1e-5)


def test_monitor_on_smoke_config(mesh_of, smoke, capsys):
    config, variables = smoke
    monitor = knn.KnnMonitor(config, mesh_of(8))
    assert "kNN monitor: 96 train images" in capsys.readouterr().out
    assert monitor.train_set.images.dtype == np.uint8
    result = monitor.evaluate(variables)
    assert set(result) == {"knn_top1", "knn_top5", "knn_seconds"}
    assert 0.0 <= result["knn_top1"] <= result["knn_top5"] <= 100.0
    # Same numbers as kNN on features computed directly.
    emb = feats_lib.Embedder(config, mesh_of(1), batch_size=32)
    tr = emb.features(variables, monitor.train_set.images)
    te = emb.features(variables, monitor.test_set.images)
    ref = numpy_knn(tr, monitor.train_set.labels, te, k=config.eval.knn_k, temperature=0.1,
                    num_classes=10)
    top1, top5 = numpy_accuracy(ref, monitor.test_set.labels)
    assert result["knn_top1"] == pytest.approx(top1)
    assert result["knn_top5"] == pytest.approx(top5)


def test_knn_on_synthetic_pixels_beats_chance(mesh_of):
    """The smoke data are learnable: kNN on raw pixels already separates classes."""
    from configs import smoke as smoke_cfg
    data = smoke_cfg.get_config().data
    train = feats_lib.load_labelled(data, "train")
    x = train.images.reshape(len(train.labels), -1).astype(np.float32) - 128.0
    half = len(x) // 2
    ranked = knn.knn_predict(x[:half], train.labels[:half], x[half:], k=20, num_classes=10,
                             mesh=mesh_of(8))
    assert knn.knn_accuracy(ranked, train.labels[half:])["top1"] > 50.0
