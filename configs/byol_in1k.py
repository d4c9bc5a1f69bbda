"""BYOL on ImageNet, the published recipe (Grill et al., 2020; deepmind-research/byol).

ResNet-50; projector and predictor both 4096-256 (Linear with bias, BN,
ReLU, Linear without bias, as byol/utils/networks.py MLP). Target network:
EMA of backbone + projector, tau from 0.996 to 1 on a cosine schedule
(barlow_jax/methods/ema.py). Loss: 2 - 2 cos, summed over both directions.
LARS, lr 0.2 x batch/256 for every parameter (biases and BN excluded from
weight decay and trust ratio, same lr), wd 1.5e-6, 10 warmup epochs then
cosine to 0, batch 4096, 1000 epochs (the 74.3% run). Augmentations: the
asymmetric BYOL views of base.py (blur 1.0 / 0.1, solarise 0.0 / 0.2).

python -m barlow_jax.main --config=configs/byol_in1k.py --workdir=DIR \
    --config.data.path=/path/to/imagenet
"""

from configs import bt_in1k


def get_config():
    c = bt_in1k.get_config()   # base.py + the ImageNet data settings (folder, val split)
    c.method = "byol"
    c.batch_size = 4096
    c.num_epochs = 1000
    c.projector.spec = "4096-256"
    c.projector.hidden_bias = True
    c.projector.last_bias = False
    c.projector.last_bn = False
    c.predictor.spec = "4096-256"
    c.predictor.hidden_bias = True
    c.predictor.last_bias = False
    c.predictor.last_bn = False
    c.loss.ema_start = 0.996   # deepmind presets: 0.99 for 100-300 epochs
    c.loss.ema_end = 1.0
    c.optimizer.name = "lars"
    c.optimizer.lr_weights = 0.2
    c.optimizer.lr_biases = 0.2
    c.optimizer.weight_decay = 1.5e-6
    c.optimizer.warmup_epochs = 10
    c.optimizer.final_lr_fraction = 0.0
    c.optimizer.reference_world_size = 0   # the true gradient, as its official code
    c.data.augment.view1.color_ops = "byol"   # deepmind byol/utils/augmentations.py
    c.data.augment.view2.color_ops = "byol"
    c.loss.target_init = "independent"   # byol_experiment.py: rng_online, rng_target
    return c
