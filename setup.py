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
        # tf.data input pipeline (folder / tfds sources, host placement).
        "data": ["tensorflow-cpu>=2.18; platform_machine=='x86_64'",
                 "tensorflow>=2.18; platform_machine!='x86_64'",
                 "tensorflow-datasets>=4.9"],
        "report": ["matplotlib>=3.8"],
        # Everything the test suite needs (torch is installed separately: see README).
        "test": ["tensorflow-cpu>=2.18; platform_machine=='x86_64'",
                 "tensorflow>=2.18; platform_machine!='x86_64'",
                 "tensorflow-datasets>=4.9", "matplotlib>=3.8", "pytest>=8"],
    },
)
