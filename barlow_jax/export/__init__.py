"""Weights between barlow_jax (Flax) and PyTorch / torchvision.

Export: ``to_torchvision(variables)`` turns the Flax ResNet's variables into
a torchvision ``resnet18/34/50`` state dict without ``fc`` (the layout of the
official Barlow Twins and VICReg ``resnet50.pth`` files), so that::

    m = torchvision.models.resnet50(); m.fc = torch.nn.Identity()
    m.load_state_dict(torch.load('resnet50.pth'))          # strict

Import: ``from_torchvision(state_dict)`` is the inverse; it reads those
official files into ``barlow_jax.models.resnet50()`` variables.

One job per module:

* ``mapping.py``: the Flax <-> torchvision names and array layouts (the table);
* ``to_torch.py``: Flax variables -> state dicts (``to_torchvision``, ``to_torch_full``);
* ``from_torch.py``: state dicts -> Flax variables (``from_torchvision``,
  ``from_torch_full``, ``infer_architecture``);
* ``files.py``: a training run's checkpoint -> ``.pth`` + ``.meta.json``
  (``export_workdir``), ``.pth`` -> msgpack (``import_pth``, ``read_variables``);
* ``formats.py``: ``.safetensors`` and the timm / Hugging Face Hub folder;
* ``cifar_stem.py``: the CIFAR-stem ResNet in PyTorch (``torch_cifar_resnet``);
* ``command.py``: the command line (``__main__.py`` runs it)::

    python -m barlow_jax.export --workdir=DIR [--step=N] --out=resnet50.pth [--full]
    python -m barlow_jax.export --import=resnet50.pth --out=variables.msgpack
    python -m barlow_jax.export --workdir=DIR --format=safetensors --out=resnet50.safetensors
    python -m barlow_jax.export --workdir=DIR --format=timm_hub --out=HUB_DIR

torch is needed only to write or read ``.pth`` files and is imported lazily;
the safetensors formats need ``safetensors``, not torch. See docs/export.md
for the snippets and the measured parity numbers.
"""

from barlow_jax.export.cifar_stem import TORCH_CIFAR_RESNET_SOURCE, torch_cifar_resnet
from barlow_jax.export.command import main
from barlow_jax.export.files import (export_workdir, import_pth, load_workdir_config,
                                     read_variables)
from barlow_jax.export.formats import export_safetensors, export_timm_hub
from barlow_jax.export.from_torch import (backbone_state_dict, from_torch_full,
                                          from_torchvision, infer_architecture)
from barlow_jax.export.mapping import (backbone_variables, count_parameters, head_entries,
                                       resnet_entries)
from barlow_jax.export.to_torch import to_torch_full, to_torchvision

__all__ = [
    "TORCH_CIFAR_RESNET_SOURCE", "backbone_state_dict", "backbone_variables",
    "count_parameters", "export_safetensors", "export_timm_hub", "export_workdir",
    "from_torch_full", "from_torchvision", "head_entries", "import_pth", "infer_architecture",
    "load_workdir_config", "main", "read_variables", "resnet_entries", "to_torch_full",
    "to_torchvision", "torch_cifar_resnet",
]
