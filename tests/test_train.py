"""The CLI end to end: SIGTERM + resume equals a straight run; bad input; outputs."""

import json
import os

import numpy as np
import pytest

from tests.cli_helpers import OPTIMIZED, read_metrics, run_cli, straight_and_interrupted_runs

STEPS = 40
COMMON = ["--config=configs/smoke.py", f"--config.num_train_steps={STEPS}",
          "--config.log_every_steps=1", "--config.checkpoint_every_steps=15"]


@pytest.mark.parametrize("n_devices", [1, 8])
def test_sigterm_then_resume_equals_uninterrupted(tmp_path, n_devices):
    # The program users run: XLA's optimisation passes on (tests/conftest.py turns them off).
    ref, got, _, _, _ = straight_and_interrupted_runs(COMMON, tmp_path, STEPS, n_devices,
                                                      env=OPTIMIZED)
    for m, r in zip(got, ref):
        np.testing.assert_allclose(m["loss"], r["loss"], rtol=1e-6, err_msg=f"step {m['step']}")


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("short") / "run")
    r = run_cli(["--config=configs/smoke.py", f"--workdir={work}", "--config.num_train_steps=4",
                 "--config.checkpoint_every_steps=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    return work, r


def test_outputs_of_a_run(short_run):
    work, r = short_run
    recs = read_metrics(work)
    for key in ("step", "loss", "lr", "on_diag", "off_diag", "pairs_per_sec", "skipped_images"):
        assert key in recs[-1], key
    assert "ETA" in r.stdout and "step 4/4" in r.stdout
    assert "step 1 done in" in r.stdout
    saved = json.load(open(os.path.join(work, "config.json")))
    assert saved["model"]["name"] == "resnet_tiny"
    assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["2", "4"]


def test_tensorboard_events_are_readable(short_run):
    tf = pytest.importorskip("tensorflow")
    work, _ = short_run
    tbdir = os.path.join(work, "tensorboard")
    (name,) = os.listdir(tbdir)
    tags = {}
    for event in tf.compat.v1.train.summary_iterator(os.path.join(tbdir, name)):
        for v in event.summary.value:
            tags.setdefault(v.tag, []).append((event.step, v.simple_value))
    losses = dict(tags["loss"])
    recs = {m["step"]: m["loss"] for m in read_metrics(work)}
    assert set(losses) == set(recs)
    for s, val in losses.items():
        np.testing.assert_allclose(val, recs[s], rtol=1e-6)


def test_incompatible_config_is_refused_and_checkpoints_kept(short_run):
    work, _ = short_run
    before = sorted(os.listdir(os.path.join(work, "checkpoints")))
    r = run_cli(["--config=configs/smoke.py", f"--workdir={work}", "--config.num_train_steps=4",
                 "--config.projector.spec=32-32"])
    assert r.returncode == 1
    assert "projector.spec" in r.stderr and "new --workdir" in r.stderr, r.stderr[-2000:]
    assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == before


def test_unknown_config_key(tmp_path):
    r = run_cli(["--config=configs/smoke.py", f"--workdir={tmp_path}", "--config.optimizer.lr_weight=1"])
    assert r.returncode == 2
    assert "unknown config key 'lr_weight'" in r.stderr and "'lr_weights'" in r.stderr
    assert "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


def test_missing_config_file(tmp_path):
    r = run_cli(["--config=configs/no_such_config.py", f"--workdir={tmp_path}"])
    assert r.returncode == 2
    assert "could not load the config file" in r.stderr and "Traceback" not in r.stderr


def test_batch_that_does_not_divide_devices(tmp_path):
    r = run_cli(["--config=configs/smoke.py", f"--workdir={tmp_path}/w", "--config.batch_size=12"],
                n_devices=8)
    assert r.returncode == 1
    assert "does not divide evenly over 8 devices" in r.stderr and "multiple of 8" in r.stderr


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = run_cli(["--config=configs/smoke.py", f"--workdir={blocker}/sub"])
    assert r.returncode == 1
    assert "Cannot write to workdir" in r.stderr and "--workdir" in r.stderr
    assert blocker.read_text() == "not a directory"


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    from barlow_jax.checkpointing import load_variables
    work = str(tmp_path / "nan")
    r = run_cli(["--config=configs/smoke.py", f"--workdir={work}", "--config.num_train_steps=12",
                 "--config.checkpoint_every_steps=1", "--config.optimizer.lr_weights=1e30",
                 "--config.optimizer.lr_biases=1e30", "--config.optimizer.warmup_epochs=0.5"])
    assert r.returncode == 1, r.stdout[-2000:]
    msg = r.stderr
    assert "Training stopped at step" in msg and "NaN/Inf" in msg and "last good checkpoint" in msg
    bad_step = int(msg.split("Training stopped at step ")[1].split(":")[0])
    steps = sorted(int(s) for s in os.listdir(os.path.join(work, "checkpoints")))
    assert steps and max(steps) < bad_step
    _, variables, step = load_variables(work)
    assert step == max(steps)
    import jax
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables["params"]))
