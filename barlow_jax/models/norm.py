"""BatchNorm with statistics per view: several views in one batch, each normalised on its own.

``BatchNorm(views=1)`` computes exactly what ``flax.linen.BatchNorm`` does
(same variables ``params/{scale,bias}`` and ``batch_stats/{mean,var}``,
float32 statistics, mean and E[x^2] averaged over ``axis_name`` in one
``pmean``, biased variance, running averages
``ra = momentum * ra + (1 - momentum) * batch_stat``), so it replaces it
without changing a parameter tree, a checkpoint or an export.

``views=V > 1``: the batch axis holds V equal groups, view after view
(``concat([view1, view2])`` on each device). In training mode each group
is normalised with its own mean and variance over the GLOBAL batch of that
view (all devices' rows of the group), which is what running the network
once per view computes, and the running averages are updated once per
view in order:

    ra <- m * ra + (1 - m) * stat(view 1);  ra <- m * ra + (1 - m) * stat(view 2)

the same as two sequential forward passes (steps.py's two-pass path and
the official PyTorch code, where each view's forward updates the running
statistics). All V groups' statistics travel in the same single ``pmean``.
In inference mode (running averages) ``views`` has no effect.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp
from jax import lax


class BatchNorm(nn.Module):
    """Batch normalisation over every axis but the last, optionally per view (see module doc)."""

    use_running_average: Optional[bool] = None
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Callable = nn.initializers.zeros
    scale_init: Callable = nn.initializers.ones
    axis_name: Optional[str] = None
    views: int = 1

    @nn.compact
    def __call__(self, x, use_running_average: Optional[bool] = None):
        use_ra = nn.merge_param("use_running_average", self.use_running_average,
                                use_running_average)
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32),
                                (features,))
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32),
                               (features,))
        views = 1 if use_ra else int(self.views)
        if x.shape[0] % views:
            raise ValueError(f"BatchNorm(views={views}) needs a batch that splits into {views} "
                             f"equal views; got {x.shape[0]} rows.")
        # [V, n, ..., C]: statistics over every axis but the view and the feature.
        xv = x.reshape((views, x.shape[0] // views) + x.shape[1:])
        red = tuple(range(1, xv.ndim - 1))
        if use_ra:
            mean, var = ra_mean.value[None], ra_var.value[None]
        else:
            xf = xv.astype(jnp.promote_types(self.dtype or x.dtype, jnp.float32))
            stats = jnp.stack([xf.mean(red), (xf * xf).mean(red)])   # [2, V, C]
            if self.axis_name is not None and not self.is_initializing():
                stats = lax.pmean(stats, self.axis_name)
            mean = stats[0]
            var = jnp.maximum(0.0, stats[1] - mean * mean)
            if not self.is_initializing():
                m = self.momentum
                new_mean, new_var = ra_mean.value, ra_var.value
                for v in range(views):
                    new_mean = m * new_mean + (1 - m) * mean[v]
                    new_var = m * new_var + (1 - m) * var[v]
                ra_mean.value, ra_var.value = new_mean, new_var
        shape = (views,) + (1,) * len(red) + (features,)
        mean, var = mean.reshape(shape), var.reshape(shape)
        y = xv - mean
        mul = lax.rsqrt(var + self.epsilon)
        args = [x]
        if self.use_scale:
            scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
            mul = mul * scale
            args.append(scale)
        y = y * mul
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
            y = y + bias
            args.append(bias)
        out_dtype = self.dtype or jnp.result_type(*args)
        return jnp.asarray(y.reshape(x.shape), out_dtype)
