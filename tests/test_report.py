"""The report: valid PNGs of the right size, a summary, and the TensorBoard C picture."""

import io
import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.cli_helpers import write_untrained_run
from PIL import Image

from barlow_jax import pictures, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) from the IHDR chunk, after checking the signature."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_MAGIC and head[12:16] == b"IHDR", path
    return struct.unpack(">II", head[16:24])


def fake_metrics(n=12, knn=True):
    rng = np.random.default_rng(0)
    out = []
    for i in range(1, n + 1):
        r = {"step": 10 * i, "loss": 100.0 / i + rng.uniform(), "on_diag": 50.0 / i,
             "off_diag": 500.0 / i, "lr": 0.01 * min(i, 5) / 5, "embed_std_mean": 0.4,
             "embed_std_min": 0.2, "embed_eff_rank": 20.0 + i, "embed_rank_frac": 0.5,
             "mean_abs_off_diag": 0.05}
        if knn and i % 4 == 0:
            r.update(knn_top1=10.0 + 3 * i, knn_top5=50.0 + 2 * i)
        out.append(r)
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A run directory as training leaves it: config.json, a checkpoint, metrics.jsonl."""
    wd = write_untrained_run(str(tmp_path_factory.mktemp("run")), 7)
    with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
        for r in fake_metrics():
            f.write(json.dumps(r) + "\n")
    return wd


def test_c_matrix_image_colours():
    block = np.array([[1.0, -1.0], [0.0, 0.5]], np.float32)
    img = pictures.c_matrix_image(block, scale=3, gap=2)
    assert img.dtype == np.uint8 and img.shape == (6, 3 * 2 + 2 + 3 * 2, 3)
    red, blue, white = img[0, 0], img[0, 3], img[3, 0]
    assert red[0] > 150 and red[2] < 60            # +1 is red
    assert blue[2] > 150 and blue[0] < 60          # -1 is blue
    np.testing.assert_array_equal(white, [255, 255, 255])
    right = img[:, 8:]                              # the identity: red diagonal, white elsewhere
    np.testing.assert_array_equal(right[0, 0], red)
    np.testing.assert_array_equal(right[0, 3], [255, 255, 255])
    # The picture survives a PNG round trip (what a TensorBoard image summary stores).
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    assert buf.getvalue()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="square"):
        pictures.c_matrix_image(np.zeros((2, 3)))


def test_curves_from_hand_made_metrics(tmp_path):
    written = report.plot_curves(fake_metrics(), str(tmp_path))
    assert written == ["curves.png", "knn.png", "health.png"]
    for name in written:
        w, h = png_size(tmp_path / name)
        assert 400 < w < 2000 and 200 < h < 2000
    assert report.plot_curves(fake_metrics(knn=False), str(tmp_path / "..")) == [
        "curves.png", "health.png"]


def test_report_on_a_workdir(workdir):
    out = report.make_report(workdir, examples=64, log=lambda s: None)
    assert out["pictures"] == ["curves.png", "knn.png", "health.png", "c_matrix.png",
                               "embedding_std.png", "pca.png"]
    for name in out["pictures"]:
        w, h = png_size(os.path.join(out["dir"], name))
        assert w > 300 and h > 200
        with Image.open(os.path.join(out["dir"], name)) as im:
            im.verify()
    summary = open(out["summary"]).read()
    assert "checkpoint pictured: step 7" in summary and "Best kNN top-1: 46.00%" in summary
    assert "![pca.png](pca.png)" in summary and "## Collapse warnings" in summary


def test_checkpoint_statistics_c_is_the_loss_c(workdir):
    """C from the report equals cross_correlation of the two views' z, computed directly."""
    from barlow_jax import checkpointing
    from barlow_jax.data import augment_jax
    from barlow_jax.methods.barlow_twins import cross_correlation
    from barlow_jax.models import build_ssl_net
    config, variables, _ = checkpointing.load_variables(workdir)
    images = np.random.default_rng(0).integers(0, 256, (24, 16, 16, 3)).astype(np.uint8)
    stats = report.checkpoint_statistics(config, variables, images, np.zeros(24, np.int32))
    v1, v2 = augment_jax.two_views(jnp.asarray(images), jax.random.key(0), config.data)
    net = build_ssl_net(config)
    tree = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    z = [net.apply(tree, v, train=True, mutable=["batch_stats"])[0]["z"] for v in (v1, v2)]
    np.testing.assert_allclose(stats["c"], cross_correlation(*z), atol=1e-5)
    assert stats["z"].shape == (24, 64) and stats["features"].shape[0] == 24


def test_missing_workdir_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither metrics.jsonl nor checkpoints"):
        report.make_report(str(tmp_path))
