"""VICReg on CIFAR-10: ResNet-18 with the CIFAR stem, 32x32 views, no blur.

Method settings from solo-learn's cifar/vicreg.yaml: expander 2048-2048-2048
(hidden layers with bias), coefficients 25/25/1, one learning rate for all
parameters. Data settings as the Barlow Twins CIFAR-10 recipe.

python -m barlow_jax.main --config=configs/vicreg_cifar10.py --workdir=DIR
"""

from configs import base
from configs.bt_cifar10 import CIFAR10_ARCHIVE, CIFAR10_MEAN, CIFAR10_STD


def get_config():
    c = base.get_config()
    # CIFAR-10 data and model (the Barlow Twins CIFAR-10 settings).
    c.batch_size = 512
    c.num_epochs = 1000
    c.model.name = "resnet18"
    c.model.cifar_stem = True
    c.data.source = "folder"
    c.data.placement = "auto"
    c.data.image_size = 32
    c.data.num_classes = 10
    c.data.split, c.data.eval_split = "train", "test"
    c.data.path = CIFAR10_ARCHIVE
    c.data.mean = CIFAR10_MEAN   # of the JPEG train set (../shared/data README)
    c.data.std = CIFAR10_STD
    c.data.augment.view1.blur_prob = 0.0
    c.data.augment.view2.blur_prob = 0.0
    c.eval_every_steps = 1000
    # VICReg.
    c.method = "vicreg"
    c.projector.spec = "2048-2048-2048"
    c.projector.hidden_bias = True
    c.projector.last_bias = False
    c.loss.sim_coeff, c.loss.std_coeff, c.loss.cov_coeff = 25.0, 25.0, 1.0
    c.optimizer.lr_biases = c.optimizer.lr_weights
    return c
