"""VICReg on CIFAR-10: ResNet-18 with the CIFAR stem, 32x32 views, no blur.

Method settings from solo-learn's cifar/vicreg.yaml: expander 2048-2048-2048
(hidden layers with bias), coefficients 25/25/1, one learning rate for all
parameters. Data settings as the Barlow Twins CIFAR-10 recipe.

python -m barlow_jax.main --config=configs/vicreg_cifar10.py --workdir=DIR
"""

from configs.bt_cifar10 import cifar10_base


def get_config():
    c = cifar10_base(num_epochs=1000)
    # VICReg.
    c.method = "vicreg"
    c.projector.spec = "2048-2048-2048"
    c.projector.hidden_bias = True
    c.projector.last_bias = False
    c.loss.sim_coeff, c.loss.std_coeff, c.loss.cov_coeff = 25.0, 25.0, 1.0
    c.optimizer.lr_biases = c.optimizer.lr_weights
    return c
