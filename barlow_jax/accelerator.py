"""Does JAX use the accelerator this machine has? One warning sentence when it does not.

The trap (issue 10): on a GPU machine whose JAX has no working CUDA plugin
(plain ``pip install jax``, or a jaxlib upgraded past its plugin, which JAX then
refuses as "not compatible"), JAX silently falls back to the CPU and
``placement='auto'`` trains there. ``check_backend()`` runs at the start of
training: when the default backend is the CPU but an accelerator is visible —
``nvidia-smi -L`` lists a GPU, ``/dev/nvidia0``, ``/dev/kfd`` (AMD) or TPU device
files exist, or a JAX CUDA plugin is installed — it prints one sentence that
names the install fix. Nothing is printed when ``JAX_PLATFORMS`` asks for the
CPU on purpose.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from importlib import metadata
from typing import Callable, Dict, List, Optional

CUDA_PLUGINS = ("jax-cuda12-plugin", "jax-cuda13-plugin")


def _nvidia_gpus() -> List[str]:
    """GPU names from ``nvidia-smi -L`` ('GPU 0: Tesla T4 (UUID: ...)'), else []."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    names = []
    for line in out.splitlines():
        if line.startswith("GPU ") and ":" in line:
            names.append(line.split(":", 1)[1].split("(UUID")[0].strip())
    return names


def visible_accelerators() -> List[str]:
    """Human-readable names of the accelerators this machine shows, e.g. ['NVIDIA GPU: Tesla T4']."""
    found = [f"NVIDIA GPU: {name}" for name in _nvidia_gpus()]
    if not found and os.path.exists("/dev/nvidia0"):
        found.append("NVIDIA GPU (/dev/nvidia0)")
    if os.path.exists("/dev/kfd"):
        found.append("AMD GPU (/dev/kfd)")
    tpu = glob.glob("/dev/accel[0-9]*")
    if not tpu and (os.environ.get("TPU_ACCELERATOR_TYPE") or os.environ.get("TPU_NAME")):
        tpu = glob.glob("/dev/vfio/[0-9]*")
    if tpu:
        found.append(f"TPU ({', '.join(sorted(tpu)[:2])}{', ...' if len(tpu) > 2 else ''})")
    return found


def installed_plugins() -> Dict[str, str]:
    """{distribution: version} of the JAX CUDA plugins installed in this environment."""
    out = {}
    for name in CUDA_PLUGINS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def backend_warning(backend: str, accelerators: List[str], plugins: Dict[str, str],
                    jaxlib_version: str) -> Optional[str]:
    """The warning sentence for this situation, or None when JAX uses what there is."""
    if backend != "cpu" or not (accelerators or plugins):
        return None
    stale = [f"{name} {v}" for name, v in plugins.items() if v != jaxlib_version]
    seen = "; ".join(accelerators) if accelerators else (
        "a JAX CUDA plugin is installed (" + ", ".join(f"{n} {v}" for n, v in plugins.items())
        + ")")
    why = (f"the installed {', '.join(stale)} does not match jaxlib {jaxlib_version}"
           if stale else f"jaxlib {jaxlib_version} has no working accelerator plugin")
    if any(a.startswith("TPU") for a in accelerators):
        fix = 'pip install -e ".[tpu]" (or pip install -U "jax[tpu]")'
    elif any(a.startswith("AMD") for a in accelerators):
        fix = "JAX's ROCm build (https://docs.jax.dev/en/latest/installation.html)"
    else:
        cuda = "cuda13" if any("cuda13" in n for n in plugins) else "cuda12"
        fix = f'pip install -e ".[{cuda}]" (or pip install -U "jax[{cuda}]")'
    return (f"warning: this machine has an accelerator ({seen}) but JAX runs on the CPU "
            f"({why}), so training would be slow: install the matching JAX with {fix}, "
            f"restart Python, and check that jax.devices() lists it (docs/troubleshooting.md).")


def cpu_requested() -> bool:
    """True when ``JAX_PLATFORMS`` limits JAX to the CPU on purpose (tests, CPU-only jobs)."""
    platforms = [p.strip() for p in os.environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    return bool(platforms) and all(p == "cpu" for p in platforms)


def check_backend(log: Callable[[str], None] = print) -> Optional[str]:
    """Prints (and returns) ``backend_warning`` for this process, or returns None."""
    import jax
    import jaxlib
    backend = jax.default_backend()
    if backend != "cpu" or cpu_requested():
        return None
    text = backend_warning(backend, visible_accelerators(), installed_plugins(),
                           getattr(jaxlib, "__version__", "?"))
    if text:
        log(text)
    return text
