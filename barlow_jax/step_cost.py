"""What a compiled training step costs, read from XLA rather than measured by running it.

* FLOPs: ``flops_per_device``, XLA's cost analysis of the compiled program
  (under ``jax.shard_map`` it is one device's program, so per device), and
  ``mfu``: model FLOP utilisation = FLOPs / step time / the device's peak
  (``device_peak_tflops``, vendor dense peaks by compute dtype).
* Memory: ``peak_memory``, the device's own ``peak_bytes_in_use`` where the
  backend reports it, else ``step_memory_bytes``, XLA's memory analysis of
  the program (arguments + outputs + temporaries - aliased buffers).
* Communication: ``collectives``, the collective bytes per device and kind
  of the compiled and of the lowered program (parsed by
  barlow_jax/collectives.py).

``barlow_jax.bench`` times the step and reports these beside the timings.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

# Dense peak TFLOP/s per device from vendor specs, by compute dtype.
PEAK_TFLOPS = {
    "H200": {"bfloat16": 989.0, "float32": 67.0},
    "H100": {"bfloat16": 989.0, "float32": 67.0},
    "A100": {"bfloat16": 312.0, "float32": 19.5},
    "TPU v4": {"bfloat16": 275.0, "float32": 275.0},
    "TPU v5 lite": {"bfloat16": 197.0, "float32": 197.0},
    "TPU v5p": {"bfloat16": 459.0, "float32": 459.0},
}


def device_peak_tflops(device, dtype: str) -> Optional[float]:
    """The dense peak TFLOP/s of one ``device`` in ``dtype``; None for an unknown device.

    Args:
        device: a JAX device; its ``device_kind`` is matched against ``PEAK_TFLOPS``.
        dtype: the compute dtype's name, 'bfloat16' or 'float32'.

    Returns:
        The peak in TFLOP/s, or None when the device kind is not in the table.
    """
    kind = getattr(device, "device_kind", "")
    for name, peaks in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return peaks[dtype]
    return None


def flops_per_device(compiled) -> float:
    """FLOPs of one execution of ``compiled`` on one device (XLA cost analysis; 0 if none)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def mfu(flops: float, step_time: float, peak_tflops: Optional[float]) -> Optional[float]:
    """Model FLOP utilisation, ``flops / step_time / peak``; None without a peak or FLOPs."""
    return flops / step_time / (peak_tflops * 1e12) if (peak_tflops and flops) else None


def step_memory_bytes(compiled) -> Optional[int]:
    """XLA's memory analysis of ``compiled``: arguments + outputs + temporaries - aliased."""
    ma = compiled.memory_analysis()
    if ma is None:
        return None
    return (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
            - ma.alias_size_in_bytes)


def peak_memory(device, compiled) -> Tuple[Optional[int], str]:
    """(bytes, where the figure comes from): the device's peak in use, else the analysis."""
    mem = None
    try:
        stats = device.memory_stats()
        mem = stats.get("peak_bytes_in_use") if stats else None
    except Exception:  # CPU backends may not report memory
        mem = None
    if mem is not None:
        return mem, "device peak_bytes_in_use"
    mem = step_memory_bytes(compiled)
    if mem is not None:
        return mem, "XLA memory analysis of the step (arguments + outputs + temporaries)"
    return None, "device peak_bytes_in_use"


def collectives(compiled, lowered, n_dev: int) -> Dict:
    """Collective bytes per device and kind: ``{'compiled': ..., 'lowered': ...}``.

    ``compiled`` may be None (lowered only); 'lowered' is the program as JAX
    emits it, before the backend's passes, and is left out where this JAX's
    ``Lowered.as_text`` has no HLO dialect.
    """
    from barlow_jax import collectives as hlo
    out = {}
    if compiled is not None:
        out["compiled"] = hlo.collective_bytes(compiled.as_text(), n_dev)
    try:  # the program as JAX emits it, before the backend's passes (backend-independent)
        out["lowered"] = hlo.collective_bytes(lowered.as_text(dialect="hlo"), n_dev)
    except Exception:  # older JAX: no HLO dialect on Lowered.as_text
        pass
    return out
