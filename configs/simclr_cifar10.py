"""SimCLR on CIFAR-10: solo-learn's scripts/pretrain/cifar/simclr.yaml.

ResNet-18 with the CIFAR stem, batch 256, 1000 epochs, temperature 0.2,
projector 2048-256 with biases, loss = mean over the 2N anchors
(solo/losses/simclr.py, so simclr_loss_scale 1.0), solo-learn's LARS (lr
0.4 x batch/256, wd 1e-4, eta 0.02, clip_lr, exclude_bias_n_norm), 10
warmup epochs then cosine to 0. Views (augmentations/symmetric.yaml): crop
(0.08, 1) to 32, jitter 0.8/0.8/0.8/0.2 p 0.8 (torchvision semantics),
grayscale 0.2, blur p 0.5, no solarisation, flip 0.5.
Deviation: solo-learn's projector is Linear-ReLU-Linear without BN; our
heads always put BN after a hidden Linear (docs/methods.md).

python -m barlow_jax.main --config=configs/simclr_cifar10.py --workdir=DIR
"""

from barlow_jax import defaults as base
from configs.bt_cifar10 import cifar10_base, solo_learn_optimizer


def get_config():
    c = cifar10_base(num_epochs=1000)
    c.method = "simclr"
    solo_learn_optimizer(c, lr=0.4, weight_decay=1e-4)
    for name in ("view1", "view2"):
        c.data.augment[name] = base.augment_view(
            flip=0.5, jitter=0.8, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
            grayscale=0.2, blur=0.5, solarize=0.0, color_ops="torchvision")
    c.projector.spec = "2048-256"
    c.projector.hidden_bias = True
    c.projector.last_bias = True
    c.projector.last_bn = False
    c.loss.temperature = 0.2
    c.loss.simclr_loss_scale = 1.0
    return c
