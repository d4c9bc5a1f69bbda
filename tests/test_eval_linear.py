"""Linear probe: learns separable features, chance on shuffled labels, exact resume."""

import numpy as np
import pytest

from tests.cli_helpers import write_untrained_run

from barlow_jax.eval import linear, sgd


def separable(n, seed, w):
    x = np.random.default_rng(seed).normal(size=(n, w.shape[0])).astype(np.float32)
    return x, np.argmax(x @ w, axis=1).astype(np.int32)


@pytest.fixture(scope="module")
def data():
    w = np.random.default_rng(0).normal(size=(16, 4))
    return separable(600, 1, w), separable(300, 2, w)


def config(**kw):
    c = linear.get_default_linear_config()
    c.epochs, c.batch_size = 10, 64
    c.update(kw)
    return c


def test_separable_features_are_learned(mesh_of, data):
    (xtr, ytr), (xte, yte) = data
    result = linear.train_head_on_features(xtr, ytr, xte, yte, linear=config(), num_classes=4,
                                           mesh=mesh_of(8), log=lambda s: None)
    assert result["complete"] and len(result["epochs"]) == 10
    assert result["final"]["top1"] > 90.0 and result["final"]["top5"] == 100.0
    assert result["best"]["top1"] >= result["final"]["top1"]
    # The lr follows the per-epoch cosine: epoch e (0-based) uses 0.3 (1 + cos(pi e / 10)) / 2.
    lrs = [h["lr"] for h in result["epochs"]]
    np.testing.assert_allclose(lrs, [0.15 * (1 + np.cos(np.pi * e / 10)) for e in range(10)])


def test_shuffled_labels_give_chance(mesh_of, data):
    (xtr, ytr), (xte, yte) = data
    ytr = np.random.default_rng(5).permutation(ytr)
    result = linear.train_head_on_features(xtr, ytr, xte, yte, linear=config(), num_classes=4,
                                           mesh=mesh_of(8), log=lambda s: None)
    assert result["final"]["top1"] < 40.0  # chance is ~25%


def test_resume_equals_straight_run(mesh_of, data, tmp_path):
    (xtr, ytr), (xte, yte) = data
    run = lambda d, **kw: linear.train_head_on_features(
        xtr, ytr, xte, yte, linear=config(epochs=4, **kw), num_classes=4, mesh=mesh_of(8),
        directory=str(d), log=lambda s: None)
    straight = run(tmp_path / "a")
    first = run(tmp_path / "b", stop_after_epochs=2)
    assert not first["complete"] and len(first["epochs"]) == 2
    resumed = run(tmp_path / "b")
    assert resumed["complete"] and [h["epoch"] for h in resumed["epochs"]] == [1, 2, 3, 4]
    for a, b in zip(straight["epochs"], resumed["epochs"]):
        assert (a["top1"], a["top5"], a["loss"]) == (b["top1"], b["top5"], b["loss"])
    for key in ("kernel", "bias"):
        np.testing.assert_array_equal(straight["head"][key], resumed["head"][key])
    with pytest.raises(ValueError, match="other settings"):
        run(tmp_path / "b", lr=0.1)


def test_sgd_matches_torch_semantics():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    p0, grads = rng.normal(size=(3, 5)), [rng.normal(size=(3, 5)) for _ in range(3)]
    tp = torch.tensor(p0, requires_grad=True)
    opt = torch.optim.SGD([tp], lr=0.5, momentum=0.9, weight_decay=0.01)
    p, buf = {"w": p0}, {"w": np.zeros_like(p0)}
    for i, g in enumerate(grads):
        lr = 0.5 / (i + 1)
        for group in opt.param_groups:
            group["lr"] = lr
        tp.grad = torch.tensor(g)
        opt.step()
        p, buf = sgd.sgd_update(p, buf, {"w": g}, lr, momentum=0.9, weight_decay=0.01)
    np.testing.assert_allclose(p["w"], tp.detach().numpy(), rtol=1e-12)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """config.json (smoke config) + a randomly initialised checkpoint at step 5."""
    return write_untrained_run(str(tmp_path_factory.mktemp("run")), 5)


def test_run_linear_eval_on_a_workdir(workdir):
    import json
    import os
    c = config(epochs=2, batch_size=48, train_examples=100, test_examples=50)
    result = linear.run_linear_eval(workdir, c, log=lambda s: None)
    assert result["complete"] and result["setup"]["mode"] == "device_crop"
    assert result["setup"]["pretrain_step"] == 5 and result["setup"]["num_train"] == 100
    saved = json.load(open(os.path.join(workdir, "linear_eval.json")))
    assert [e["epoch"] for e in saved["epochs"]] == [1, 2]
    assert saved["final"]["top1"] == result["final"]["top1"]
    assert saved["protocol"]["batch_size"] == 48 and "head" not in saved


def test_cli_features_mode_and_resume(workdir, tmp_path):
    """The command line: --workdir, --linear.* and --config.* flags; a rerun resumes."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    wd = str(tmp_path / "run")
    shutil.copytree(workdir, wd, ignore=shutil.ignore_patterns("linear_eval*"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "barlow_jax.eval.linear", f"--workdir={wd}",
           "--linear.epochs=2", "--linear.augment=False", "--linear.stop_after_epochs=1",
           "--config.data.num_eval_examples=40"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "linear probe epoch 1/2" in out.stdout and "40 test features" in out.stdout
    first = json.load(open(os.path.join(wd, "linear_eval.json")))
    assert not first["complete"] and first["setup"]["mode"] == "features"
    out = subprocess.run(cmd[:-2] + [cmd[-1]], cwd=root, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed after epoch 1" in out.stdout and "linear probe done" in out.stdout
    assert json.load(open(os.path.join(wd, "linear_eval.json")))["complete"]
    bad = subprocess.run([sys.executable, "-m", "barlow_jax.eval.linear",
                          f"--workdir={tmp_path / 'nothing'}"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "config.json does not exist" in bad.stderr
    typo = subprocess.run(cmd[:4] + ["--linear.epoch=3"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert typo.returncode == 2 and "unknown config key 'epoch'" in typo.stderr
