"""Evaluation runs: SIGTERM is acknowledged, finished epochs kept, JSON after every epoch, ETA."""

import json
import os
import signal

import numpy as np

from barlow_jax.eval import linear
from tests.cli_helpers import write_untrained_run
from test_eval_linear import config, separable


def test_linear_probe_sigterm_keeps_epochs_writes_json_and_resumes(tmp_path):
    os.makedirs(tmp_path / "run")
    work = write_untrained_run(str(tmp_path / "run"), 5)
    c = config(epochs=4, batch_size=48, train_examples=100, test_examples=50)
    lines = []

    def log(line):
        lines.append(line)
        if line.startswith("linear probe epoch 2/4"):
            saved = json.load(open(os.path.join(work, "linear_eval.json")))
            assert [e["epoch"] for e in saved["epochs"]] == [1] and not saved["complete"]
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would, mid-run

    first = linear.run_linear_eval(work, c, log=log)
    assert first["stopped_by"] == "SIGTERM" and not first["complete"]
    assert any("received SIGTERM; stopping after the current batch" in s for s in lines)
    assert "stopped by SIGTERM after epoch 2/4" in lines[-1] and "rerun the same command" in lines[-1]
    assert "ETA " in next(s for s in lines if s.startswith("linear probe epoch 1/4"))
    saved = json.load(open(os.path.join(work, "linear_eval.json")))
    assert [e["epoch"] for e in saved["epochs"]] == [1, 2] and not saved["complete"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(
        signal.getsignal(signal.SIGTERM))  # the handler was handed back

    lines.clear()
    second = linear.run_linear_eval(work, c, log=lines.append)
    assert any("resumed after epoch 2" in s for s in lines)
    assert second["complete"] and [e["epoch"] for e in second["epochs"]] == [1, 2, 3, 4]
    assert [e["top1"] for e in second["epochs"][:2]] == [e["top1"] for e in first["epochs"]]
    assert json.load(open(os.path.join(work, "linear_eval.json")))["complete"]


def test_head_training_sigterm_drops_only_the_unfinished_epoch(mesh_of, tmp_path):
    w = np.random.default_rng(0).normal(size=(16, 4))
    (xtr, ytr), (xte, yte) = separable(600, 1, w), separable(300, 2, w)

    def log(line):
        if line.startswith("linear probe epoch 1/"):
            os.kill(os.getpid(), signal.SIGTERM)

    run = lambda log: linear.train_head_on_features(
        xtr, ytr, xte, yte, linear=config(epochs=3), num_classes=4, mesh=mesh_of(8),
        directory=str(tmp_path / "d"), log=log)
    stopped = run(log)
    assert stopped["stopped_by"] == "SIGTERM" and len(stopped["epochs"]) == 1
    resumed = run(lambda s: None)
    assert resumed["complete"] and resumed["epochs"][0] == stopped["epochs"][0]


def test_semisup_sigterm_keeps_epochs_writes_json_and_resumes(mesh_of, tmp_path):
    import jax
    import jax.numpy as jnp
    from barlow_jax.eval import semisup
    from barlow_jax.models import build_ssl_net
    from configs import smoke
    from test_eval_semisup import colour_data, settings
    config = smoke.get_config()
    images, labels = colour_data(192)
    config.data.source = "arrays"
    config.data.arrays = {"train": (images[:128], labels[:128]),
                          "test": (images[128:], labels[128:])}
    net = build_ssl_net(config)
    variables = jax.tree.map(np.asarray, dict(jax.jit(
        lambda k: net.init(k, jnp.zeros((2, 16, 16, 3))))(jax.random.key(0))))
    work = str(tmp_path / "run")
    path = os.path.join(work, "semisup_eval.json")
    lines = []

    def log(line):
        lines.append(line)
        if line.startswith("semisup 50% epoch 2/4"):
            saved = json.load(open(path))["50%"]   # epoch 1 is on disk already
            assert [e["epoch"] for e in saved["epochs"]] == [1] and not saved["complete"]
            os.kill(os.getpid(), signal.SIGTERM)

    run = lambda log: semisup.run_semisup(
        work, settings(epochs=4, batch_size=32), 0.5, config=config, variables=variables,
        pretrain_step=0, mesh=mesh_of(2), log=log)
    first = run(log)
    assert not first["complete"] and [e["epoch"] for e in first["epochs"]] == [1, 2]
    assert any("semisup 50%: received SIGTERM; stopping after the current batch" in s
               for s in lines)
    assert "stopped by SIGTERM after epoch 2/4" in lines[-1] and "rerun the same command" in lines[-1]
    assert "ETA " in next(s for s in lines if s.startswith("semisup 50% epoch 1/4"))
    saved = json.load(open(path))["50%"]
    assert [e["epoch"] for e in saved["epochs"]] == [1, 2] and not saved["complete"]

    lines.clear()
    second = run(lines.append)
    assert any("resumed after epoch 2" in s for s in lines)
    assert second["complete"] and [e["epoch"] for e in second["epochs"]] == [1, 2, 3, 4]
    assert [e["top1"] for e in second["epochs"][:2]] == [e["top1"] for e in first["epochs"]]
    assert json.load(open(path))["50%"]["complete"]


def test_full_disk_during_an_epoch_save_is_one_sentence_and_resumes(mesh_of, tmp_path, monkeypatch,
                                                                    full_disk_at):
    import pytest
    from barlow_jax import checkpointing
    w = np.random.default_rng(0).normal(size=(16, 4))
    (xtr, ytr), (xte, yte) = separable(600, 1, w), separable(300, 2, w)
    full_disk_at(2)  # a disk that fills while epoch 2 is written
    run = lambda: linear.train_head_on_features(
        xtr, ytr, xte, yte, linear=config(epochs=3), num_classes=4, mesh=mesh_of(8),
        directory=str(tmp_path / "d"), log=lambda s: None)
    with pytest.raises(checkpointing.CheckpointSaveError) as e:
        run()
    msg = str(e.value)
    assert "no space left" in msg and "latest complete checkpoint is epoch 1" in msg
    assert "rerun the same command" in msg and "\n" not in msg
    assert "keep_checkpoints" not in msg  # a training setting; evaluations keep two epochs
    assert sorted(os.listdir(tmp_path / "d")) == ["1"]  # the half-written folder is removed
    monkeypatch.undo()
    resumed = run()
    assert resumed["complete"] and [h["epoch"] for h in resumed["epochs"]] == [1, 2, 3]
