"""VICReg on CIFAR-10: solo-learn's scripts/pretrain/cifar/vicreg.yaml.

ResNet-18 with the CIFAR stem, batch 256, 1000 epochs, expander
2048-2048-2048 (nn.Linear with bias, BN, ReLU), coefficients 25/25/1,
solo-learn's LARS (lr 0.3 x batch/256, wd 1e-4, eta 0.02, clip_lr,
exclude_bias_n_norm), 10 warmup epochs then cosine to 0. Views (the yaml's
own augmentations block, both views alike): crop (0.2, 1) to 32, jitter
0.4/0.4/0.2/0.1 p 0.8, grayscale 0.2, no blur, solarize 0.1, flip 0.5.
tests/test_recipes.py compares every number with the cited file.

python -m barlow_jax.main --config=configs/vicreg_cifar10.py --workdir=DIR
"""

from barlow_jax import defaults as base
from configs.bt_cifar10 import cifar10_base, solo_learn_optimizer


def get_config():
    c = cifar10_base(num_epochs=1000)
    c.method = "vicreg"
    solo_learn_optimizer(c, lr=0.3, weight_decay=1e-4)
    for name in ("view1", "view2"):
        v = base.augment_view(flip=0.5, jitter=0.8, brightness=0.4, contrast=0.4,
                              saturation=0.2, hue=0.1, grayscale=0.2, blur=0.0,
                              solarize=0.1, color_ops="torchvision")
        v.crop_scale = (0.2, 1.0)
        c.data.augment[name] = v
    c.projector.spec = "2048-2048-2048"
    c.projector.hidden_bias = True
    c.projector.last_bias = True
    c.loss.sim_coeff, c.loss.std_coeff, c.loss.cov_coeff = 25.0, 25.0, 1.0
    return c
