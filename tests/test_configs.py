"""Every config loads, locks, and sets only keys that barlow_jax/defaults.py declares."""

import glob
import importlib
import os

import pytest

from configs import base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
               if not os.path.basename(p).startswith("_"))


def _keys(d, prefix=""):
    out = set()
    for k, v in d.items():
        if hasattr(v, "items"):
            out |= _keys(v, f"{prefix}{k}.")
        else:
            out.add(f"{prefix}{k}")
    return out


@pytest.mark.parametrize("name", NAMES)
def test_config_loads_and_locks(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    config.lock()
    extra = _keys(config) - _keys(base.get_config())
    assert not extra, f"configs/{name}.py sets keys base.py does not declare: {sorted(extra)}"
    with pytest.raises(AttributeError):
        config.not_a_key = 1
    from barlow_jax.methods import get_method
    get_method(config.method)
    from barlow_jax.models.factory import CHOICES
    assert config.batch_size > 0 and config.compute_dtype in CHOICES


def test_bt_in1k_is_the_paper():
    from configs import bt_in1k
    c = bt_in1k.get_config()
    assert (c.method, c.model.name, c.projector.spec) == ("barlow_twins", "resnet50", "8192-8192-8192")
    assert c.batch_size == 2048 and c.num_epochs == 1000 and c.loss.lambd == 0.0051
    o = c.optimizer
    assert (o.lr_weights, o.lr_biases, o.weight_decay, o.warmup_epochs) == (0.2, 0.0048, 1.5e-6, 10)
    assert o.scale_lr_by_batch and o.final_lr_fraction == 0.001
    assert c.model.zero_init_residual and not c.projector.hidden_bias and not c.projector.last_bias
