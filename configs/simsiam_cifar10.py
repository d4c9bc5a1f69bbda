"""SimSiam on CIFAR-10: solo-learn's scripts/pretrain/cifar/simsiam.yaml.

ResNet-18 with the CIFAR stem, batch 256, 1000 epochs. Projector
2048-2048-2048 as solo/methods/simsiam.py: Linear without bias, BN, ReLU
twice, then Linear and ``BatchNorm1d(affine=False)`` (its last Linear's bias
is frozen and cancelled by that BN, so none here); predictor 512-2048 (Linear
without bias, BN, ReLU, Linear with bias). Loss: negative cosine with
stop-gradient, averaged over the two directions. Optimizer: SGD momentum 0.9
(solo/args/pretrain.py default), lr 0.5 x batch/256, weight decay 1e-5 on
every parameter (exclude_bias_n_norm_wd off), solo-learn's warmup_cosine
(10 epochs from 3e-5, cosine to 0, per update); the predictor keeps the
constant lr (``static_lr`` in SimSiam.learnable_params:
``optimizer.fix_predictor_lr``). Views: augmentations/symmetric_weak.yaml,
both alike: crop (0.08, 1) to 32, jitter 0.4/0.4/0.4/0.1 p 0.8 (torchvision
semantics), grayscale 0.2, blur p 0.5, no solarisation, flip 0.5.
tests/test_recipes.py compares every number with the cited file.

The SimSiam paper's own CIFAR recipe (appendix D: SGD lr 0.03 x B/256, wd
5e-4, batch 512, 800 epochs, no warmup, 2-layer projector, no blur) is a
different run; reach it with overrides if needed.

python -m barlow_jax.main --config=configs/simsiam_cifar10.py --workdir=DIR
"""

from barlow_jax import defaults as base
from configs.bt_cifar10 import cifar10_base, solo_learn_optimizer


def get_config():
    c = cifar10_base(num_epochs=1000)
    c.method = "simsiam"
    solo_learn_optimizer(c, lr=0.5, weight_decay=1e-5)
    c.optimizer.name = "sgd"            # optimizer.name: "sgd" in simsiam.yaml
    c.optimizer.fix_predictor_lr = True  # the predictor's static_lr
    c.projector.spec = "2048-2048-2048"
    c.projector.hidden_bias = False
    c.projector.last_bias = False
    c.projector.last_bn = True
    c.projector.last_bn_affine = "none"     # BatchNorm1d(proj_output_dim, affine=False)
    c.predictor.spec = "512-2048"
    c.predictor.hidden_bias = False
    c.predictor.last_bias = True
    c.predictor.last_bn = False
    for name in ("view1", "view2"):
        c.data.augment[name] = base.augment_view(
            flip=0.5, jitter=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
            grayscale=0.2, blur=0.5, solarize=0.0, color_ops="torchvision")
    return c
