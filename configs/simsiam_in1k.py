"""SimSiam on ImageNet, the published 100-epoch recipe (Chen & He, 2021; facebookresearch/simsiam).

ResNet-50; projector 2048-2048-2048 (Linear without bias, BN, ReLU twice,
then Linear and a final BN without affine parameters, as the official
``BatchNorm1d(affine=False)``), predictor 512-2048 (Linear without bias,
BN, ReLU, Linear with bias). Loss: negative cosine with stop-gradient, averaged over the two
directions. Optimizer: SGD (not LARS), momentum 0.9, lr 0.05 x batch/256,
weight decay 1e-4 on every parameter, cosine to 0 with no warmup, batch
512, 100 epochs; the predictor's lr stays at the base rate (the official
``--fix-pred-lr``, ``optimizer.fix_predictor_lr``).
Augmentations: symmetric MoCo-v2 views (crop scale 0.2-1, jitter
0.4/0.4/0.4/0.1 with p 0.8, grayscale 0.2, blur p 0.5, no solarisation).

python -m barlow_jax.main --config=configs/simsiam_in1k.py --workdir=DIR \
    --config.data.path=/path/to/imagenet
"""

from barlow_jax import defaults as base
from configs import bt_in1k


def symmetric_view(**kw):
    """SimSiam's (MoCo v2) augmentation of either view."""
    v = base.augment_view(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                          jitter=0.8, grayscale=0.2, **kw)
    v.crop_scale = (0.2, 1.0)
    return v


def get_config():
    c = bt_in1k.get_config()   # base.py + the ImageNet data settings (folder, val split)
    c.method = "simsiam"
    c.batch_size = 512
    c.num_epochs = 100
    c.projector.spec = "2048-2048-2048"
    c.projector.hidden_bias = False
    c.projector.last_bias = False
    c.projector.last_bn = True
    c.projector.last_bn_affine = "none"
    c.predictor.spec = "512-2048"
    c.predictor.hidden_bias = False
    c.predictor.last_bias = True
    c.predictor.last_bn = False
    c.optimizer.name = "sgd"
    c.optimizer.lr_weights = 0.05
    c.optimizer.lr_biases = 0.05
    c.optimizer.weight_decay = 1e-4
    c.optimizer.momentum = 0.9
    c.optimizer.warmup_epochs = 0
    c.optimizer.final_lr_fraction = 0.0
    c.optimizer.fix_predictor_lr = True
    c.data.augment.view1 = symmetric_view(blur=0.5, solarize=0.0)
    c.data.augment.view2 = symmetric_view(blur=0.5, solarize=0.0)
    c.optimizer.reference_world_size = 0   # the true gradient, as its official code
    return c
