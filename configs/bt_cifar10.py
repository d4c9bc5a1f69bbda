"""Barlow Twins on CIFAR-10: ResNet-18 with the CIFAR stem, 32x32 views, no blur.

The recipe of solo-learn's scripts/pretrain/cifar/barlow.yaml (vturrisi/
solo-learn, with augmentations/asymmetric.yaml; its reported CIFAR-10 online
linear top-1 after 1000 epochs: 92.10, FIELD_NOTES §6): batch 256, 1000
epochs, projector 2048-2048-2048 (nn.Linear with bias, BN, ReLU), lambda
0.0051, scale_loss 0.1, solo-learn's LARS (lr 0.3 x batch/256, wd 1e-4, eta
0.02, clip_lr, exclude_bias_n_norm), 10 warmup epochs from 3e-5 then cosine to 0.
Views: crop (0.08, 1) to 32, jitter 0.4/0.4/0.2/0.1 p 0.8 (torchvision
semantics), grayscale 0.2, no blur, solarize 0.0 / 0.2, flip 0.5.
tests/test_recipes.py compares every number with the cited file; the
deviations that remain are listed in docs/methods.md.

Data: the CIFAR-10 JPEG archive of ../shared/data, found relative to this
file (so any working directory works), extracted and indexed once into
config.data.cache_dir. Mean/std are the JPEG train set's (data README).
Placement 'auto': the uint8 dataset on the accelerator with on-device
augmentation when there is one, tf.data on the host on a CPU-only machine.

python -m barlow_jax.main --config=configs/bt_cifar10.py --workdir=DIR
"""

import os

from barlow_jax import defaults as base

CIFAR10_ARCHIVE = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
    "cifar10-jpeg.tar.gz"))
CIFAR10_MEAN = (0.4913, 0.4821, 0.4465)  # the JPEG train set's (../shared/data README)
CIFAR10_STD = (0.2452, 0.2428, 0.2606)


def cifar10_base(num_epochs: int = 800):
    """base.get_config() with the CIFAR-10 data and model every *_cifar10 config shares.

    ResNet-18 with the CIFAR stem, batch 512 pairs, 32x32 views without blur,
    the shared JPEG archive with its train-set statistics, kNN every 1000 steps,
    the online linear probe on.
    """
    c = base.get_config()
    c.batch_size = 512
    c.num_epochs = num_epochs
    c.eval_every_steps = 1000    # kNN monitor on the test split
    c.online_probe.enabled = True  # online linear probe (online_top1, online_test_top1)
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


def solo_learn_optimizer(c, *, lr: float, weight_decay: float):
    """solo-learn's cifar/*.yaml optimizer block: LARS (solo/utils/lars.py), warmup_cosine.

    lr per 256 pairs (solo/args/pretrain.py scales it by batch/256), eta 0.02,
    clip_lr and exclude_bias_n_norm on; scheduler warmup_cosine with solo-learn's
    defaults (solo/methods/base.py): 10 warmup epochs from warmup_start_lr 3e-5,
    then cosine to min_lr 0, stepped every update (``optimizer.schedule='solo_learn'``).
    """
    c.batch_size = 256
    c.optimizer.name = "solo_lars"
    c.optimizer.schedule = "solo_learn"
    c.optimizer.warmup_start_lr = 3e-5
    c.optimizer.lr_weights = lr
    c.optimizer.lr_biases = lr       # unused by solo_lars (one learning rate)
    c.optimizer.scale_lr_by_batch = True
    c.optimizer.weight_decay = weight_decay
    c.optimizer.momentum = 0.9
    c.optimizer.eta = 0.02
    c.optimizer.clip_lr = True
    c.optimizer.exclude_bias_n_norm = True
    c.optimizer.warmup_epochs = 10.0
    c.optimizer.final_lr_fraction = 0.0
    c.optimizer.reference_world_size = 0
    return c


def solo_learn_asymmetric_views(c):
    """solo-learn scripts/pretrain/cifar/augmentations/asymmetric.yaml."""
    for name, solarize in (("view1", 0.0), ("view2", 0.2)):
        v = base.augment_view(flip=0.5, jitter=0.8, brightness=0.4, contrast=0.4,
                              saturation=0.2, hue=0.1, grayscale=0.2, blur=0.0,
                              solarize=solarize, color_ops="torchvision")
        c.data.augment[name] = v
    return c


def get_config():
    c = cifar10_base(num_epochs=1000)
    solo_learn_optimizer(c, lr=0.3, weight_decay=1e-4)
    solo_learn_asymmetric_views(c)
    c.projector.spec = "2048-2048-2048"
    c.projector.hidden_bias = True
    c.projector.last_bias = True
    c.loss.lambd = 0.0051
    c.optimizer.grad_scale = 0.1     # method_kwargs.scale_loss (a loss multiplier)
    return c
