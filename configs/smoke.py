"""A tiny Barlow Twins run on synthetic two-view data: seconds on one CPU.

The tests and CI use it. python -m barlow_jax.main --config=configs/smoke.py --workdir=/tmp/smoke
"""

from configs import base


def get_config():
    c = base.get_config()
    c.batch_size = 32
    c.num_epochs = 2
    c.log_every_steps = 2
    c.checkpoint_every_steps = 4
    c.compute_dtype = "float32"
    c.model.name = "resnet_tiny"
    c.model.width = 8
    c.model.cifar_stem = True
    c.projector.spec = "64-64"
    c.optimizer.warmup_epochs = 1
    c.data.source = "synthetic"
    c.data.placement = "device"
    c.data.image_size = 16
    c.data.num_examples = 256
    c.data.num_eval_examples = 128
    c.data.num_classes = 10
    c.data.augment.view1.blur_prob = 0.0
    c.data.augment.view2.blur_prob = 0.0
    c.eval.knn_k = 20
    return c
