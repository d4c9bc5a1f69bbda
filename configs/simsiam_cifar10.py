"""SimSiam on CIFAR-10, the paper's CIFAR recipe (Chen & He, 2021, appendix D).

ResNet-18 with the CIFAR stem; projector 2048-2048 (two layers on CIFAR,
final BN without affine parameters), predictor 512-2048; SGD with momentum
0.9, lr 0.03 x batch/256, weight decay 5e-4, cosine to 0 without warmup,
batch 512, 800 epochs. The predictor's lr follows the schedule (the paper's
CIFAR appendix does not fix it; ``optimizer.fix_predictor_lr`` can).
Symmetric MoCo-v2 views (crop scale 0.2-1, jitter 0.4/0.4/0.4/0.1 p 0.8,
grayscale 0.2) without blur at 32x32.

python -m barlow_jax.main --config=configs/simsiam_cifar10.py --workdir=DIR
"""

from configs.bt_cifar10 import cifar10_base
from configs.simsiam_in1k import symmetric_view


def get_config():
    c = cifar10_base(num_epochs=800)
    # SimSiam.
    c.method = "simsiam"
    c.projector.spec = "2048-2048"
    c.projector.hidden_bias = False
    c.projector.last_bias = False
    c.projector.last_bn = True
    c.projector.last_bn_affine = "none"     # official BatchNorm1d(affine=False)
    c.predictor.spec = "512-2048"
    c.predictor.hidden_bias = False
    c.predictor.last_bias = True
    c.optimizer.name = "sgd"
    c.optimizer.lr_weights = 0.03
    c.optimizer.lr_biases = 0.03
    c.optimizer.weight_decay = 5e-4
    c.optimizer.momentum = 0.9
    c.optimizer.warmup_epochs = 0
    c.optimizer.final_lr_fraction = 0.0
    c.data.augment.view1 = symmetric_view(blur=0.0, solarize=0.0)
    c.data.augment.view2 = symmetric_view(blur=0.0, solarize=0.0)
    return c
