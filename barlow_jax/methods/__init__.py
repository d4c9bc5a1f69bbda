"""The explicit registry of self-supervised methods.

A method is a pure loss over the two views' network outputs plus what the
step and the loop's telemetry need to know about it. Adding one touches its
own file (and configs) and one entry below; train.py and steps.py name no
method's metrics.

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

What the loop reports (telemetry.py):

* ``progress_keys``: ``(metric, format)`` pairs shown on the progress line
  after the loss, e.g. Barlow Twins' ``on_diag``/``off_diag``.
* ``pictures``: ``pictures.Picture``s drawn from non-scalar metrics (Barlow
  Twins' ``c_block``), logged on evaluated/checkpointed/last steps.
* ``warnings(record) -> [str]``: the method's own collapse warnings, added
  to the embedding-health ones (health.py).
* ``ema_tau(loss_config, total_steps) -> tau(step)``: the target's decay
  schedule, for methods with ``ema_target`` (BYOL, methods/ema.py).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from barlow_jax.methods import barlow_twins, byol, ema, simclr, simsiam, vicreg
from barlow_jax.pictures import Picture


def no_warnings(record: Mapping) -> List[str]:
    """The default ``Method.warnings``: none.

    Args:
        record: the logged metrics of a step.

    Returns:
        An empty list.
    """
    del record
    return []


@dataclasses.dataclass(frozen=True)
class Method:
    """One self-supervised method: its loss and what the step and the loop need to know.

    Attributes:
        name: the ``config.method`` value that selects it.
        loss: ``loss(out1, out2, tgt1, tgt2, loss_config, axis_name) -> (loss, metrics)``
            (module docstring); each method module's ``method_loss``.
        needs_predictor: the network must have a predictor head (``config.predictor``).
        ema_target: the step keeps an EMA target network and passes its outputs
            as ``tgt1``/``tgt2``.
        bn_views: 'per_view' or 'joint' BatchNorm statistics in training.
        progress_keys: ``(metric, format)`` pairs for the progress line.
        pictures: ``pictures.Picture``s drawn from non-scalar metrics.
        warnings: ``warnings(record) -> [str]``, the method's collapse warnings.
        ema_tau: ``ema_tau(loss_config, total_steps) -> tau(step)`` for ``ema_target``.
    """

    name: str
    loss: Callable
    needs_predictor: bool = False
    ema_target: bool = False
    bn_views: str = "per_view"
    progress_keys: Tuple[Tuple[str, str], ...] = ()
    pictures: Tuple[Picture, ...] = ()
    warnings: Callable[[Mapping], List[str]] = no_warnings
    ema_tau: Optional[Callable] = None


METHODS: Dict[str, Method] = {
    "barlow_twins": Method("barlow_twins", barlow_twins.method_loss,
                           progress_keys=barlow_twins.PROGRESS_KEYS,
                           pictures=barlow_twins.PICTURES, warnings=barlow_twins.warnings),
    "vicreg": Method("vicreg", vicreg.method_loss),
    "simclr": Method("simclr", simclr.method_loss, bn_views="joint"),
    "byol": Method("byol", byol.method_loss, needs_predictor=True, ema_target=True,
                   ema_tau=ema.schedule),
    "simsiam": Method("simsiam", simsiam.method_loss, needs_predictor=True),
}


def get_method(name: str) -> Method:
    """The registered method called ``name``.

    Args:
        name: a key of ``METHODS``, e.g. ``config.method``.

    Returns:
        Its ``Method``.

    Raises:
        ValueError: no method of that name is registered.
    """
    if name not in METHODS:
        raise ValueError(f"config.method={name!r} is not a known method; use one of "
                         f"{sorted(METHODS)}.")
    return METHODS[name]
