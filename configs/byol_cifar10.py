"""BYOL on CIFAR-10: solo-learn's scripts/pretrain/cifar/byol.yaml.

ResNet-18 with the CIFAR stem, batch 256, 1000 epochs, projector 4096-256
and predictor 4096-256 (nn.Linear with bias, BN, ReLU, nn.Linear with bias),
target EMA tau 0.99 -> 1.0, solo-learn's LARS (lr 1.0 x batch/256, wd 1e-5,
eta 0.02, clip_lr, exclude_bias_n_norm), 10 warmup epochs then cosine to 0.
Views: augmentations/asymmetric.yaml (as configs/bt_cifar10.py).
tests/test_recipes.py compares every number with the cited file.

python -m barlow_jax.main --config=configs/byol_cifar10.py --workdir=DIR
"""

from configs.bt_cifar10 import cifar10_base, solo_learn_asymmetric_views, solo_learn_optimizer


def get_config():
    c = cifar10_base(num_epochs=1000)
    c.method = "byol"
    solo_learn_optimizer(c, lr=1.0, weight_decay=1e-5)
    solo_learn_asymmetric_views(c)
    c.projector.spec = "4096-256"
    c.projector.hidden_bias = True
    c.projector.last_bias = True
    c.predictor.spec = "4096-256"
    c.predictor.hidden_bias = True
    c.predictor.last_bias = True
    c.loss.ema_start = 0.99
    c.loss.ema_end = 1.0
    return c
