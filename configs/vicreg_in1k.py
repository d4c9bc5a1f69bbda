"""VICReg on ImageNet, the published recipe (Bardes et al., 2022; facebookresearch/vicreg).

ResNet-50, expander 8192-8192-8192 (hidden Linear layers with bias, last
without), sim/std/cov coefficients 25/25/1, LARS with base lr 0.2 x batch/256
for every parameter (biases and BN too, as main_vicreg.py uses one learning
rate), wd 1e-6 (main_vicreg.py default), 10 warmup epochs then cosine to
0.001 x peak, batch 2048, 1000 epochs. Augmentations: those of Barlow
Twins (base.py).

python -m barlow_jax.main --config=configs/vicreg_in1k.py --workdir=DIR \
    --config.data.path=/path/to/imagenet
"""

from configs import bt_in1k


def get_config():
    c = bt_in1k.get_config()   # base.py + the ImageNet data settings (folder, val split)
    c.method = "vicreg"
    c.batch_size = 2048
    c.num_epochs = 1000
    c.projector.spec = "8192-8192-8192"
    c.projector.hidden_bias = True
    c.projector.last_bias = False
    c.loss.sim_coeff = 25.0
    c.loss.std_coeff = 25.0
    c.loss.cov_coeff = 1.0
    c.optimizer.name = "lars"
    c.optimizer.lr_weights = 0.2
    c.optimizer.lr_biases = 0.2
    c.optimizer.weight_decay = 1e-6
    c.optimizer.warmup_epochs = 10
    c.optimizer.final_lr_fraction = 0.001
    c.optimizer.reference_world_size = 0   # the true gradient, as its official code
    return c
