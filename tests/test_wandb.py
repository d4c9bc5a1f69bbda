"""config.wandb sends the same scalars and pictures as TensorBoard through the wandb package.

wandb is not installed here (it is large and starts a service process), so a
fake ``wandb`` module injected into sys.modules records what the writer calls:
``init(project, entity, mode='offline', ...)``, ``run.log(dict, step=)``,
``wandb.Image`` and ``run.finish()``.
"""

import json
import sys
import types

import numpy as np
import pytest

from barlow_jax import metrics as metrics_lib
from barlow_jax.train import train_and_evaluate
from configs import smoke


class _Run:
    def __init__(self, calls):
        self.calls = calls

    def log(self, values, step=None):
        self.calls.append(("log", step, values))

    def finish(self):
        self.calls.append(("finish",))


@pytest.fixture
def fake_wandb(monkeypatch):
    calls = []
    mod = types.ModuleType("wandb")

    def init(**kw):
        calls.append(("init", kw))
        return _Run(calls)

    class Image:
        def __init__(self, data):
            self.data = np.asarray(data)

    mod.init, mod.Image = init, Image
    monkeypatch.setitem(sys.modules, "wandb", mod)
    return calls


def _config():
    c = smoke.get_config()
    c.model.width = 4
    c.projector.spec = "32-16"
    c.num_train_steps = 4
    c.log_every_steps = 2
    c.checkpoint_every_steps = 4
    return c


def test_off_without_project(fake_wandb):
    assert metrics_lib.WandbWriter.from_config(_config(), "/tmp/x") is None
    assert fake_wandb == []


def test_missing_package_is_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    c = _config()
    c.wandb.project = "p"
    with pytest.raises(ImportError, match="pip install wandb"):
        metrics_lib.WandbWriter.from_config(c, "/tmp/x")


def test_trainer_logs_same_scalars_and_picture(fake_wandb, tmp_path):
    c = _config()
    c.wandb.project, c.wandb.entity, c.wandb.mode = "proj", "me", "offline"
    train_and_evaluate(c, str(tmp_path / "w"))
    kind, kw = fake_wandb[0]
    assert kind == "init" and kw["project"] == "proj" and kw["entity"] == "me"
    assert kw["mode"] == "offline" and kw["dir"] == str(tmp_path / "w")
    assert kw["config"]["optimizer"]["name"] == c.optimizer.name
    logs = [x for x in fake_wandb if x[0] == "log"]
    scalars = {step: v for _, step, v in logs if "loss" in v}
    records = [json.loads(line) for line in open(tmp_path / "w" / "metrics.jsonl")]
    assert sorted(scalars) == [r["step"] for r in records] == [2, 4]
    for r in records:
        expected = {k: v for k, v in r.items() if k != "step" and isinstance(v, (int, float))}
        assert scalars[r["step"]] == pytest.approx(expected)
    pictures = [(step, v) for _, step, v in logs if "cross_correlation_vs_identity" in v]
    assert [s for s, _ in pictures] == [4]
    assert pictures[0][1]["cross_correlation_vs_identity"].data.ndim == 3
    assert fake_wandb[-1] == ("finish",)
