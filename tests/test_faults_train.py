"""Training faults, in process: NaN then a lower lr, finished runs, extension, full disk,
nonsense settings (docs/faults.md). Config-file faults go through the CLI (no compile)."""

import json
import os

import jax
import numpy as np
import pytest

from barlow_jax import checkpointing, train
from configs import smoke
from tests.cli_helpers import run_cli


def _config(**kw):
    c = smoke.get_config()
    c.num_train_steps, c.log_every_steps, c.checkpoint_every_steps = 8, 2, 2
    for k, v in kw.items():
        sub = c
        *path, last = k.split(".")
        for p in path:
            sub = sub[p]
        sub[last] = v
    return c


def _lines_parse(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]  # a torn line would raise here


def test_nan_then_lower_lr_resumes_finished_says_complete_and_extension_trains(tmp_path, capsys):
    work = str(tmp_path / "run")
    bad = _config(**{"optimizer.lr_weights": 1e30, "optimizer.lr_biases": 1e30,
                     "optimizer.warmup_epochs": 0.5, "checkpoint_every_steps": 1,
                     "log_every_steps": 1})
    with pytest.raises(train.TrainingDiverged) as e:
        train.train_and_evaluate(bad, work)
    msg = str(e.value)
    assert "--config.optimizer.lr_weights=" in msg and "--config.compute_dtype=float32" in msg
    good = checkpointing.Checkpointer(work, read_only=True)
    last_good = good.latest_step()
    good.close()
    assert last_good is not None

    # The advice, followed: lower learning rates (and float32) are accepted on resume.
    capsys.readouterr()
    fixed = _config(**{"optimizer.warmup_epochs": 0.5, "checkpoint_every_steps": 1,
                       "log_every_steps": 1, "compute_dtype": "float32"})
    record = train.train_and_evaluate(fixed, work)
    out = capsys.readouterr().out
    assert f"Resumed from {os.path.join(os.path.abspath(work), 'checkpoints')}/{last_good}" in out
    assert "optimizer.lr_weights 1e+30 -> 0.2" in out
    assert record["step"] == 8 and np.isfinite(record["loss"])
    steps = [r["step"] for r in _lines_parse(work)]
    assert steps == sorted(steps) and steps[-1] == 8 and len(steps) == len(set(steps))

    # A finished run says so, and how to extend it; nothing is rewritten.
    before = os.listdir(os.path.join(work, "checkpoints"))
    record = train.train_and_evaluate(fixed, work)
    out = capsys.readouterr().out
    assert "is complete" in out and "--config.num_train_steps=16" in out
    assert record["step"] == 8 and os.listdir(os.path.join(work, "checkpoints")) == before

    # Extension: a larger total trains further from the last step.
    longer = _config(**{"optimizer.warmup_epochs": 0.5, "num_train_steps": 12,
                        "compute_dtype": "float32"})
    record = train.train_and_evaluate(longer, work)
    assert record["step"] == 12
    assert [r["step"] for r in _lines_parse(work)][-3:] == [8, 10, 12]
    assert json.load(open(os.path.join(work, "config.json")))["num_train_steps"] == 12

    # Keys outside the policy are still refused, naming the policy.
    with pytest.raises(ValueError, match="cannot change on resume"):
        train.train_and_evaluate(_config(num_train_steps=14, seed=3), work)


def test_full_disk_during_save_is_one_sentence_and_keeps_previous(tmp_path, monkeypatch,
                                                                  full_disk_at):
    work = str(tmp_path / "run")
    full_disk_at(6)  # a disk that fills while step 6 is written
    with pytest.raises(checkpointing.CheckpointSaveError) as e:
        train.train_and_evaluate(_config(), work)
    msg = str(e.value)
    assert "no space left" in msg and "latest complete checkpoint is step 4" in msg
    assert "rerun the same command" in msg and "\n" not in msg
    assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["2", "4"]
    _, variables, step = checkpointing.load_variables(work)
    assert step == 4 and all(np.isfinite(x).all() for x in jax.tree.leaves(variables["params"]))
    _lines_parse(work)
    monkeypatch.undo()
    assert train.train_and_evaluate(_config(), work)["step"] == 8  # space freed: resumes


@pytest.mark.parametrize("key,value,expect", [
    ("num_train_steps", -5, "num_train_steps=-5 must be a positive number of steps, or -1"),
    ("num_train_steps", 0, "num_train_steps=0 must be a positive"),
    ("num_epochs", 0, "num_epochs=0 must be positive"),
    ("num_epochs", -3, "num_epochs=-3 must be positive"),
    ("batch_size", 0, "batch_size=0 must be a positive number of image pairs"),
    ("eval_every_steps", -1, "eval_every_steps=-1 must be 0"),
])
def test_nonsense_settings_refused(tmp_path, key, value, expect):
    c = _config()
    c.num_train_steps = -1 if key == "num_epochs" else c.num_train_steps
    c[key] = value
    with pytest.raises(ValueError, match=expect.replace("(", r"\(")):
        train.train_and_evaluate(c, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")  # refused before anything is written


def test_config_file_faults_via_cli(tmp_path):
    cases = {
        "syntax.py": ("from configs import base\ndef get_config():\n    c = base.get_config(\n"
                      "    return c\n", "syntax.py:3 has a syntax error"),
        "noget.py": ("X = 1\n", "defines no get_config()"),
        "typo.py": ("from configs import smoke\ndef get_config():\n    c = smoke.get_config()\n"
                    "    c.batch_sizee = 64\n    return c\n",
                    "sets 'batch_sizee', which barlow_jax/defaults.py does not declare (did you mean "
                    "'batch_size'?)"),
    }
    for name, (text, expect) in cases.items():
        (tmp_path / name).write_text(text)
        r = run_cli([f"--config={tmp_path / name}", f"--workdir={tmp_path / 'w'}"], timeout=300)
        assert r.returncode == 2 and expect in r.stderr, (name, r.stderr[-1500:])
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli([f"--config={tmp_path / 'noget.py'}", f"--workdir={tmp_path / 'w'}",
                 "--verbose"], timeout=300)
    assert r.returncode == 2 and "Traceback" in r.stderr  # tracebacks on request
    r = run_cli(["--config=configs/smoke.py", f"--workdir={tmp_path / 'w'}",
                 "--config.num_train_steps=-5"], timeout=300)
    assert r.returncode == 1 and "num_train_steps=-5 must be a positive" in r.stderr
    assert not os.path.exists(tmp_path / "w")


def test_progress_helpers_eta_markers_and_warnings_once():
    from barlow_jax import telemetry
    from barlow_jax.health import NOT_COMPUTED, collapse_warnings
    assert telemetry.remaining_evals(0, 100, 10, 5) == 10
    assert telemetry.remaining_evals(95, 100, 30, 5) == 1  # the final evaluation
    assert telemetry.remaining_evals(100, 100, 10, 5) == 0
    assert telemetry.remaining_evals(0, 9, 0, 1) == 0
    rec = telemetry.scalars({"loss": np.float32(1.0), "embed_eff_rank": np.float32(NOT_COMPUTED),
                             "embed_rank_frac": np.float32(NOT_COMPUTED)})
    assert rec == {"loss": 1.0}  # the "not computed" marker never reaches the logs
    warned = {}
    dead = lambda v: collapse_warnings({"embed_std_min": v, "embed_std_mean": 1.0})
    assert len(telemetry.new_warnings(dead(1e-5), warned, 2)) == 1
    assert telemetry.new_warnings(dead(2e-5), warned, 4) == []   # same kind, other value: quiet
    assert telemetry.new_warnings(dead(0.5), warned, 6) == []    # healthy again
    assert len(telemetry.new_warnings(dead(1e-5), warned, 8)) == 1  # came back: printed again
