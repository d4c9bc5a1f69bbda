"""The training state: everything a step reads and writes, nothing else."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    """step: updates done so far (int32 scalar). params/batch_stats: the
    online SSLNet's variables (float32). opt_state: the optimizer's state.
    target: None, or {'params', 'batch_stats'} of the EMA target network
    (BYOL): never differentiated, checkpointed with the rest.
    probe: None, or the online linear probe's {'params', 'opt_state'}
    (barlow_jax/online_probe.py), trained on stop-gradient features.
    loss_scale: None, or the float16 dynamic loss scale (barlow_jax/loss_scale.py).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    target: Any = None
    probe: Any = None
    loss_scale: Any = None

    def variables(self):
        return {"params": self.params, "batch_stats": self.batch_stats}
