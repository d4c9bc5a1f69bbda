"""loss.target_init: BYOL's target from its own rng (deepmind byol_experiment.py) or a copy."""

import jax
import numpy as np
import optax
import pytest

from barlow_jax import parallel
from barlow_jax.methods import get_method
from barlow_jax.train import init_state
from configs import byol_in1k, smoke


def _state(target_init):
    c = smoke.get_config("byol")
    c.model.width = 4
    c.projector.spec, c.predictor.spec = "16-8", "16-8"
    c.loss.target_init = target_init
    mesh = parallel.make_mesh(jax.devices()[:1])
    return jax.device_get(init_state(c, get_method("byol"), optax.sgd(0.1), mesh,
                                     (2, 16, 16, 3)))


def test_independent_target_has_the_online_structure_but_other_values():
    copy, indep = _state("copy"), _state("independent")
    online = {k: v for k, v in copy.params.items() if k != "predictor"}
    assert jax.tree.structure(indep.target["params"]) == jax.tree.structure(online)
    # copy: identical; independent: every weight matrix differs, online params unchanged
    for a, b in zip(jax.tree.leaves(copy.target["params"]), jax.tree.leaves(online)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(indep.params), jax.tree.leaves(copy.params)):
        np.testing.assert_array_equal(a, b)
    weights = [(a, b) for a, b in zip(jax.tree.leaves(indep.target["params"]),
                                      jax.tree.leaves(online)) if a.ndim > 1]
    assert weights and all(np.abs(a - b).max() > 0 for a, b in weights)
    assert byol_in1k.get_config().loss.target_init == "independent"


def test_bad_target_init_is_refused():
    with pytest.raises(ValueError, match="target_init"):
        _state("random")
