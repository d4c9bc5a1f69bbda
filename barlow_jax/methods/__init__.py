"""The explicit registry of self-supervised methods.

A method is a pure loss over the two views' network outputs plus two flags
the step needs. Adding one touches its own file and one entry below.

``loss(out1, out2, tgt1, tgt2, loss_config, axis_name) -> (loss, metrics)``:

* ``out1``/``out2``: online network outputs for view 1 / view 2, dicts with
  ``features`` (trunk), ``z`` (projector) and ``p`` (predictor, if any), all
  float32, per-device local batch under shard_map.
* ``tgt1``/``tgt2``: target (EMA) network outputs for the views, already
  stop-gradient'ed, or None when the method has no target network.
* ``axis_name``: the mapped device axis for global-batch statistics.

``bn_views`` declares the BatchNorm statistics the method's network uses in
training: ``'per_view'`` (each view normalised with its own global-batch
statistics, as two forward passes in PyTorch: Barlow Twins, VICReg, BYOL,
SimSiam official code) or ``'joint'`` (one set of statistics over both
views: the official SimCLR model runs once on the concatenated views).
steps.py runs both views in one pass either way (``config.step.one_pass``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict

from barlow_jax.methods import barlow_twins, byol, simclr, simsiam, vicreg


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    loss: Callable
    needs_predictor: bool = False
    ema_target: bool = False
    bn_views: str = "per_view"


METHODS: Dict[str, Method] = {
    "barlow_twins": Method("barlow_twins", barlow_twins.method_loss),
    "vicreg": Method("vicreg", vicreg.method_loss),
    "simclr": Method("simclr", simclr.method_loss, bn_views="joint"),
    "byol": Method("byol", byol.method_loss, needs_predictor=True, ema_target=True),
    "simsiam": Method("simsiam", simsiam.method_loss, needs_predictor=True),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"config.method={name!r} is not a known method; use one of "
                         f"{sorted(METHODS)}.")
    return METHODS[name]
