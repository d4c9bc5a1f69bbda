"""barlow_jax: Barlow Twins and friends for self-supervised visual learning in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="barlow_jax",
    version="0.1.0",
    description="Barlow Twins, VICReg, SimCLR, BYOL and SimSiam in JAX/Flax, "
                "from one GPU to accelerator pods.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["barlow_jax", "barlow_jax.*", "configs"]),
    python_requires=">=3.10",
    install_requires=[
        # JAX 0.10 on Python 3.11 (CPU machines), 0.11 on Python 3.12 (GPU machine).
        "jax>=0.10,<0.12",
        "flax>=0.12,<0.14",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "ml-collections>=1.0",
        "absl-py>=2.0",
        "numpy>=1.26",
        "pillow>=10",
    ],
    extras_require={
        # Accelerator builds of JAX (jax's own extras pin jaxlib and the plugin to the
        # jax version, so an upgrade never leaves a stale CUDA plugin behind): NVIDIA GPUs
        # with CUDA 12 or 13 (the wheels bring CUDA/cuDNN; any recent driver), Cloud TPU VMs.
        "cuda12": ["jax[cuda12]>=0.10,<0.12"],
        "cuda13": ["jax[cuda13]>=0.10,<0.12"],
        "tpu": ["jax[tpu]>=0.10,<0.12"],
        # tf.data input pipeline (folder / tfds sources, host placement).
        "data": ["tensorflow-cpu>=2.18; platform_machine=='x86_64'",
                 "tensorflow>=2.18; platform_machine!='x86_64'",
                 "tensorflow-datasets>=4.9"],
        "report": ["matplotlib>=3.8"],
        # export --format=safetensors / timm_hub; wandb for config.wandb is left to the user.
        "export": ["safetensors>=0.4"],
        # Everything the test suite needs (torch is installed separately: see README;
        # torchvision resolves to the release of that torch, tests/torch_libs.py imports it).
        "test": ["tensorflow-cpu>=2.18; platform_machine=='x86_64'",
                 "tensorflow>=2.18; platform_machine!='x86_64'",
                 "tensorflow-datasets>=4.9", "matplotlib>=3.8", "pytest>=8", "pytest-xdist>=3.6",
                 "safetensors>=0.4", "torchvision", "timm>=1.0",
                 # tests/test_notebook.py executes notebooks/colab_demo.ipynb.
                 "nbclient>=0.9", "nbformat>=5.9", "ipykernel>=6",
                 # the linter CI runs (pyproject.toml), pinned so its rules do not drift.
                 "ruff==0.17.6"],
    },
)
