"""Barlow Twins on CIFAR-10: ResNet-18 with the CIFAR stem, 32x32 views, no blur.

Recipe of the small-image benchmarks (FIELD_NOTES §6): lightly's CIFAR-10
Barlow Twins run (batch 512, 800 epochs) with solo-learn's cifar/barlow.yaml
optimizer (LARS, lr 0.3 per 256 pairs for all parameters, eta 0.02, weight
decay 1e-4, 10 warmup epochs, cosine to 0) and projector 2048-2048. Views are
FIELD_NOTES §3 at 32 pixels with the blur dropped (solarize 0.0 / 0.2 kept).

Data: the CIFAR-10 JPEG archive of ../shared/data, found relative to this
file (so any working directory works), extracted and indexed once into
config.data.cache_dir. Mean/std are the JPEG train set's (data README).
Placement 'auto': the uint8 dataset on the accelerator with on-device
augmentation when there is one, tf.data on the host on a CPU-only machine.

python -m barlow_jax.main --config=configs/bt_cifar10.py --workdir=DIR
"""

import os

from configs import base

CIFAR10_ARCHIVE = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
    "cifar10-jpeg.tar.gz"))
CIFAR10_MEAN = (0.4913, 0.4821, 0.4465)  # the JPEG train set's (../shared/data README)
CIFAR10_STD = (0.2452, 0.2428, 0.2606)


def cifar10_base(num_epochs: int = 800):
    """base.get_config() with the CIFAR-10 data and model every *_cifar10 config shares.

    ResNet-18 with the CIFAR stem, batch 512 pairs, 32x32 views without blur,
    the shared JPEG archive with its train-set statistics, kNN every 1000 steps.
    """
    c = base.get_config()
    c.batch_size = 512
    c.num_epochs = num_epochs
    c.eval_every_steps = 1000    # kNN monitor on the test split
    c.model.name = "resnet18"
    c.model.cifar_stem = True
    c.data.source = "folder"
    c.data.path = CIFAR10_ARCHIVE
    c.data.placement = "auto"
    c.data.image_size = 32
    c.data.num_classes = 10
    c.data.split, c.data.eval_split = "train", "test"
    c.data.mean = CIFAR10_MEAN
    c.data.std = CIFAR10_STD
    c.data.augment.view1.blur_prob = 0.0
    c.data.augment.view2.blur_prob = 0.0
    return c


def get_config():
    c = cifar10_base(num_epochs=800)
    c.projector.spec = "2048-2048"
    c.optimizer.lr_weights = 0.3
    c.optimizer.lr_biases = 0.3
    c.optimizer.eta = 0.02
    c.optimizer.weight_decay = 1e-4
    c.optimizer.final_lr_fraction = 0.0
    return c
