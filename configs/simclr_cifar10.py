"""SimCLR on CIFAR-10: ResNet-18 with the CIFAR stem, 32x32 views, no blur.

Temperature 0.2 (solo-learn's cifar/simclr.yaml; 0.2-0.5 is the usual CIFAR
range), projection head 2048-128 as on ImageNet (final BN scale-only),
symmetric views with colour jitter of strength 1.0 (0.8, 0.8, 0.8, 0.2) with
p 0.8, grayscale 0.2, no blur (dropped at 32x32), no solarisation; one
learning rate for all parameters, cosine to 0.

python -m barlow_jax.main --config=configs/simclr_cifar10.py --workdir=DIR
"""

from configs.bt_cifar10 import cifar10_base
from configs.simclr_in1k import symmetric_view


def get_config():
    c = cifar10_base(num_epochs=1000)
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
