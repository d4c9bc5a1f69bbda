"""Import the real torchvision and timm in the test environment, or say why not.

PyPI's Linux torchvision wheels are CUDA builds: beside the CPU build of
torch (``torch==2.13.0+cpu``, what this project's CPU machines install) their
compiled ``_C`` extension cannot load (it links ``libtorch_cuda.so``).
torchvision then runs without its C++ ops (nms, roi_align, video/image
decoding), which the models do not use, but torchvision 0.28 / 0.29 still
fail at import: ``_meta_registrations.py`` registers fake kernels for
``torchvision::nms`` and ``torchvision::qnms`` without checking that the
extension loaded ("RuntimeError: operator torchvision::nms does not exist").

``import_torchvision()`` imports torchvision as is; only on that error it
declares the two operator schemas (no kernels) and imports again, so
``torchvision.models`` (pure ``torch.nn``) and timm (which imports
torchvision) work. With a matching build (CUDA torch, or a CPU torchvision
from download.pytorch.org) the first import succeeds and nothing is
declared.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

_NMS_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_library = []   # keeps the torch.library.Library alive (dropping it unregisters the ops)


def installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _forget(prefix: str) -> None:
    for mod in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[mod]


def import_torchvision():
    """The torchvision module, or None when it is not installed (errors propagate)."""
    if not installed("torchvision") or not installed("torch"):
        return None
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as e:
        if "torchvision::nms does not exist" not in str(e):
            raise
    import torch
    _forget("torchvision")
    lib = torch.library.Library("torchvision", "DEF")
    for schema in _NMS_SCHEMAS:
        lib.define(schema)
    _library.append(lib)
    return importlib.import_module("torchvision")


def import_timm():
    """The timm module, or None when timm (or torchvision, which it imports) is missing."""
    if not installed("timm") or import_torchvision() is None:
        return None
    return importlib.import_module("timm")
