"""SimCLR on CIFAR-10: ResNet-18 with the CIFAR stem, 32x32 views, no blur.

Temperature 0.2 (solo-learn's cifar/simclr.yaml; 0.2-0.5 is the usual CIFAR
range), projection head 2048-128 as on ImageNet (final BN scale-only),
symmetric views with colour jitter of strength 1.0 (0.8, 0.8, 0.8, 0.2) with
p 0.8, grayscale 0.2, no blur (dropped at 32x32), no solarisation; one
learning rate for all parameters, cosine to 0.

python -m barlow_jax.main --config=configs/simclr_cifar10.py --workdir=DIR
"""

from configs import base
from configs.bt_cifar10 import CIFAR10_ARCHIVE, CIFAR10_MEAN, CIFAR10_STD
from configs.simclr_in1k import symmetric_view


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
    c.eval_every_steps = 1000
    # SimCLR.
    c.method = "simclr"
    c.projector.spec = "2048-128"
    c.projector.hidden_bias = False
    c.projector.last_bias = False
    c.projector.last_bn = True
    c.projector.last_bn_affine = "scale"   # official center=False: scale, no offset
    c.loss.temperature = 0.2
    c.optimizer.lr_biases = c.optimizer.lr_weights
    c.optimizer.final_lr_fraction = 0.0
    c.data.augment.view1 = symmetric_view()
    c.data.augment.view2 = symmetric_view()
    c.data.augment.view1.blur_prob = 0.0
    c.data.augment.view2.blur_prob = 0.0
    return c
