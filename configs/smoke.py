"""A tiny run on synthetic two-view data: seconds on one CPU, for every method.

The tests and CI use it. The config string picks the method (default Barlow Twins):

    python -m barlow_jax.main --config=configs/smoke.py --workdir=/tmp/smoke
    python -m barlow_jax.main --config=configs/smoke.py:byol --workdir=/tmp/smoke_byol

Each method keeps the shared tiny backbone and data and gets the smallest
heads of its own shape: VICReg a projector with hidden biases; SimCLR a
Linear-BN-ReLU-Linear-BN projector with a scale-only final BN and T = 0.2;
BYOL a projector and predictor with hidden biases and the short-run EMA
start 0.99; SimSiam a projector with a parameter-free final BN, a
bottleneck predictor and SGD (lr 0.05 x B/256, no warmup, the predictor's
lr fixed as in the official 100-epoch run). The Barlow Twins
setting is exactly the one the trainer tests were written against.
"""

from barlow_jax import defaults as base

def get_config(arg=None):
    method = arg or "barlow_twins"
    if method not in SMOKE_METHODS:
        raise ValueError(f"configs/smoke.py has no setting for method {method!r}; write "
                         f"--config=configs/smoke.py:<method> with one of {list(SMOKE_METHODS)}.")
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
    _METHOD_SETTINGS[method](c)
    c.method = method
    return c


def _barlow_twins(c):
    del c  # the defaults above


def _vicreg(c):
    c.projector.spec = "64-64"
    c.projector.hidden_bias = True
    c.optimizer.lr_biases = c.optimizer.lr_weights


def _simclr(c):
    c.projector.spec = "64-32"
    c.projector.last_bn = True
    c.projector.last_bn_affine = "scale"
    c.loss.temperature = 0.2
    c.optimizer.lr_biases = c.optimizer.lr_weights


def _byol(c):
    c.projector.spec = "64-32"
    c.projector.hidden_bias = True
    c.predictor.spec = "32-32"
    c.predictor.hidden_bias = True
    c.predictor.last_bias = False
    c.loss.ema_start = 0.99
    c.optimizer.lr_biases = c.optimizer.lr_weights


def _simsiam(c):
    c.projector.spec = "64-32"
    c.projector.last_bn = True
    c.projector.last_bn_affine = "none"
    c.predictor.spec = "16-32"
    c.predictor.hidden_bias = False
    c.optimizer.name = "sgd"
    c.optimizer.lr_weights = 0.05
    c.optimizer.lr_biases = 0.05
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_epochs = 0
    c.optimizer.final_lr_fraction = 0.0
    c.optimizer.fix_predictor_lr = True


_METHOD_SETTINGS = {"barlow_twins": _barlow_twins, "vicreg": _vicreg, "simclr": _simclr,
                    "byol": _byol, "simsiam": _simsiam}
SMOKE_METHODS = tuple(_METHOD_SETTINGS)
