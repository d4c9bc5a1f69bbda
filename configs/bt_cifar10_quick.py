"""The README's first command: Barlow Twins on CIFAR-10 that finishes where it runs.

    python -m barlow_jax.main --config=configs/bt_cifar10_quick.py --workdir=workdirs/quick

The size follows the machine: ``get_config()`` asks JAX for its default backend
(``jax.default_backend()``; single-host runs only, since it initialises JAX before
``jax.distributed.initialize``). Force one with ``--config=configs/bt_cifar10_quick.py:cpu``
or ``:gpu`` (TPUs take the ``gpu`` setting).

``cpu`` — minutes on a 2-core CPU (README and docs/quickstart.md give the measured
time and numbers): a tiny ResNet (one BasicBlock per stage, width 16, CIFAR stem,
32x32 views), projector 512-512, batch 128, CPU_STEPS steps (about 0.8 epoch of the
50,000 training images). The kNN monitor (k 200, T 0.1; bank: a fixed random 10,000 of
the training images, queries: the whole 10,000-image test split) runs on the untrained
network at step 0 and at the end, so the run prints both: training must beat the
untrained network's kNN. The online linear probe trains beside it.

``gpu`` — the same recipe at full size where there is an accelerator: ResNet-18 with the
CIFAR stem, projector 2048-2048, batch 512, GPU_EPOCHS epochs, kNN on the whole training
split every 5 epochs. Its time on a T4 or any other GPU is NOT MEASURED YET.

Both: the shared JPEG archive ``../shared/data/cifar10-jpeg.tar.gz`` (extracted, indexed
and decoded once into ``~/.cache/barlow_jax``), placement 'device' (the uint8 dataset in
the device's memory and every augmentation in JAX, so TensorFlow is not needed), the
views of configs/bt_cifar10.py (no blur at 32 px, solarize 0 / 0.2), the optimizer of
configs/bt_cifar10_fast.py (this project's LARS, lr 0.3 per 256 pairs, eta 0.02, weight
decay 1e-4, cosine to 0) with a warm-up of a tenth of the run, ``compute_dtype='auto'``
(float32 on a CPU; bfloat16, or float16 with loss scaling on T4/V100, on a GPU).
The full recipe is configs/bt_cifar10.py (1000 epochs).
"""

from configs.bt_cifar10 import cifar10_base

CPU_STEPS = 300
CPU_BATCH = 128
GPU_EPOCHS = 30
GPU_BATCH = 512
VARIANTS = ("cpu", "gpu", "tpu")


def _backend_variant() -> str:
    import jax
    return "cpu" if jax.default_backend() == "cpu" else "gpu"


def get_config(arg=None):
    variant = (arg or _backend_variant()).lower()
    if variant not in VARIANTS:
        raise ValueError(f"configs/bt_cifar10_quick.py has no setting {variant!r}; write "
                         f"--config=configs/bt_cifar10_quick.py:cpu or :gpu (or leave it out "
                         f"to follow jax.default_backend()).")
    c = cifar10_base(num_epochs=GPU_EPOCHS)
    c.compute_dtype = "auto"
    c.data.placement = "device"
    c.optimizer.name = "lars"
    c.optimizer.lr_weights = 0.3
    c.optimizer.lr_biases = 0.3
    c.optimizer.eta = 0.02
    c.optimizer.weight_decay = 1e-4
    c.optimizer.final_lr_fraction = 0.0
    c.eval.knn_at_start = True
    if variant == "cpu":
        c.model.name, c.model.width = "resnet_tiny", 16
        c.projector.spec = "512-512"
        c.batch_size = CPU_BATCH
        c.num_train_steps = CPU_STEPS
        steps_per_epoch = 50_000 // CPU_BATCH
        c.optimizer.warmup_epochs = CPU_STEPS / 10 / steps_per_epoch
        c.log_every_steps = 25
        c.checkpoint_every_steps = 100
        c.eval_every_steps = CPU_STEPS          # at the end (and at step 0)
        c.eval.knn_train_examples = 10_000
    else:
        c.model.name, c.model.width = "resnet18", 64
        c.projector.spec = "2048-2048"
        c.batch_size = GPU_BATCH
        steps_per_epoch = 50_000 // GPU_BATCH
        c.optimizer.warmup_epochs = GPU_EPOCHS / 10
        c.log_every_steps = steps_per_epoch
        c.checkpoint_every_steps = 5 * steps_per_epoch
        c.eval_every_steps = 5 * steps_per_epoch
    return c
