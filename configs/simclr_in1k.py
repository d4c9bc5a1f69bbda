"""SimCLR (v1) on ImageNet, the published recipe (Chen et al., 2020; google-research/simclr).

ResNet-50; projection head 2048-128 as in the v1 code (``num_proj_layers=2``):
Linear-BN-ReLU then Linear-BN, Linear layers without bias (the BN's offset
plays its role); the final BN has a scale but no offset, as the official
``batch_norm_relu(..., center=False)`` (``last_bn_affine='scale'``).
NT-Xent with temperature 0.1 and every other sample of both views on all
devices as a negative. LARS, lr 0.3 x
batch/256 for every parameter, wd 1e-6, 10 warmup epochs then cosine to 0,
batch 4096, 1000 epochs (the 69.3% run). Symmetric views: colour jitter of
strength 1.0 (0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale p 0.2, blur p 0.5
on both, no solarisation.

Loss scale: the official code sums the two views' mean losses (2x ours);
see barlow_jax/methods/simclr.py.

python -m barlow_jax.main --config=configs/simclr_in1k.py --workdir=DIR \
    --config.data.path=/path/to/imagenet
"""

from barlow_jax import defaults as base
from configs import bt_in1k


def symmetric_view(**kw):
    """SimCLR's augmentation of either view (jitter strength 1.0, blur p 0.5)."""
    return base.augment_view(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
                             jitter=0.8, grayscale=0.2, blur=0.5, solarize=0.0,
                             **{"color_ops": "tf", **kw})


def get_config():
    c = bt_in1k.get_config()   # base.py + the ImageNet data settings (folder, val split)
    c.method = "simclr"
    c.batch_size = 4096
    c.num_epochs = 1000
    c.projector.spec = "2048-128"
    c.projector.hidden_bias = False
    c.projector.last_bias = False
    c.projector.last_bn = True
    c.projector.last_bn_affine = "scale"
    c.loss.temperature = 0.1
    c.optimizer.lr_weights = 0.3
    c.optimizer.lr_biases = 0.3
    c.optimizer.weight_decay = 1e-6
    c.optimizer.warmup_epochs = 10
    c.optimizer.final_lr_fraction = 0.0
    c.data.augment.view1 = symmetric_view()
    c.data.augment.view2 = symmetric_view()
    c.optimizer.reference_world_size = 0   # the true gradient, as its official code
    c.optimizer.name = "simclr_lars"   # tf2/lars_optimizer.py: classic momentum
    c.optimizer.eta = 0.001
    c.loss.simclr_loss_scale = 2.0      # tf2/objective.py: loss_a + loss_b
    return c
