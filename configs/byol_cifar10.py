"""BYOL on CIFAR-10: ResNet-18 with the CIFAR stem, 32x32 views, no blur.

Projector and predictor 4096-256 as on ImageNet; target EMA from 0.99 to 1
(deepmind's preset for runs shorter than 1000 ImageNet epochs, also
solo-learn's cifar/byol.yaml); asymmetric views (solarise 0.0 / 0.2, no
blur at 32x32); one learning rate for all parameters, cosine to 0.

python -m barlow_jax.main --config=configs/byol_cifar10.py --workdir=DIR
"""

from configs.bt_cifar10 import cifar10_base


def get_config():
    c = cifar10_base(num_epochs=1000)
    # BYOL.
    c.method = "byol"
    c.projector.spec = "4096-256"
    c.projector.hidden_bias = True
    c.projector.last_bias = False
    c.predictor.spec = "4096-256"
    c.predictor.hidden_bias = True
    c.predictor.last_bias = False
    c.loss.ema_start = 0.99
    c.loss.ema_end = 1.0
    c.optimizer.lr_biases = c.optimizer.lr_weights
    c.optimizer.final_lr_fraction = 0.0
    return c
