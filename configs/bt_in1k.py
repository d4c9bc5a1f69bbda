"""Barlow Twins on ImageNet-1k with the paper's settings (Zbontar et al., 2021).

ResNet-50, projector 8192-8192-8192, global batch 2048 pairs, 1000 epochs,
lambda 0.0051, LARS with lr 0.2 (weights) / 0.0048 (biases, BN) per 256
pairs scaled by batch/256, weight decay 1.5e-6 (the paper's value; the
official main.py defaults to 1e-6), 10 warmup epochs then cosine to 0.001x.

    python -m barlow_jax.main --config=configs/bt_in1k.py --workdir=DIR \
        --config.data.path=/path/to/imagenet   # holds train/<wnid>/*.JPEG
"""

from configs import base


def get_config():
    c = base.get_config()   # the base config already is the paper's setting
    c.method = "barlow_twins"
    c.data.source = "folder"
    c.data.placement = "split"   # crop/flip on the host, colour/blur/solarize on the devices
    c.data.split = "train"
    c.data.eval_split = "val"
    c.data.num_classes = 1000
    c.eval_every_steps = 0       # kNN over 1.28M images is not cheap; enable per run
    c.eval.knn_train_examples = 50000
    return c
