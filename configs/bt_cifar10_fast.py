"""Barlow Twins on CIFAR-10 in a 10-minute budget on one H200 (issue 13 item 2).

Target: kNN top-1 >= 0.87 and linear-probe top-1 >= 90% on the CIFAR-10 test
split after <= 10 minutes of training. NOT MEASURED YET: this workplace had no
GPU when it was written; launch/cifar10_fast_h200.sh runs it and writes the
numbers (docs/performance.md, "CIFAR-10 in 10 minutes"). Each choice, and why:

* ResNet-18 with the CIFAR stem (3x3 conv, no max-pool), projector 2048-2048:
  solo-learn's cifar/barlow.yaml (proj_hidden_dim = proj_output_dim = 2048),
  which reports 92.1% online linear top-1 after 1000 epochs; the lambda 0.0051
  and loss scale of configs/base.py are the paper's / solo-learn's.
* Optimizer: LARS, lr 0.3 per 256 pairs for weights and biases, eta 0.02,
  weight decay 1e-4, warmup + cosine to 0 (solo-learn's CIFAR Barlow Twins
  recipe, scripts/pretrain/cifar/barlow: lr 0.3, eta_lars 0.02,
  exclude_bias_n_norm_lars, weight_decay 1e-4, batch 256, scale_loss 0.1).
* Batch 1024 with lr scaled linearly (0.3 x 1024/256 = 1.2 effective,
  ``optimizer.scale_lr_by_batch``): the step is throughput-bound at this size
  (FIELD_NOTES §6: ~41-46k pairs/s at 512 for the plain step; a larger batch
  amortises the per-step overhead); LARS keeps linear scaling stable up to
  several thousand pairs (You et al. 2017; the Barlow Twins paper trains at
  2048 with lr 0.2 x B/256). 10 warmup epochs as solo-learn.
* 250 epochs: 250 x 48 steps x 1024 = 12.3M pairs. At the >= 50k pairs/s the
  issue targets that is ~245 s, at 30k ~410 s, which leaves room for compile,
  the dataset upload and the kNN monitor inside 600 s. The published curves
  (lightly's CIFAR-10 benchmark: kNN 0.842 at 200 epochs, 0.859 at 800, batch
  512) put 0.87 at the edge of what 250 epochs give; launch/cifar10_fast_h200.sh
  sets ``num_epochs`` from a measured first step if the step is faster.
* bf16 compute, float32 parameters (configs/base.py compute_dtype).
* placement 'device': the uint8 dataset on the GPU, every augmentation there,
  no host work per step (barlow_jax/data/pipeline.py); blur off at 32 px as in
  the CIFAR configs (solo-learn's CIFAR recipe: gaussian_prob 0.0 0.0,
  solarization_prob 0.0 0.2, as configs/base.py's views).
* kNN monitor every 10 epochs on the full test split (k 200, T 0.1): its share
  of the wall clock is logged as knn_time_fraction.

python -m barlow_jax.main --config=configs/bt_cifar10_fast.py --workdir=DIR
"""

from configs.bt_cifar10 import cifar10_base

STEPS_PER_EPOCH = 50_000 // 1024   # 48


def get_config():
    c = cifar10_base(num_epochs=250)
    c.batch_size = 1024
    c.compute_dtype = "bfloat16"
    c.data.placement = "device"
    c.eval_every_steps = 10 * STEPS_PER_EPOCH
    c.log_every_steps = STEPS_PER_EPOCH
    c.checkpoint_every_steps = 25 * STEPS_PER_EPOCH
    c.projector.spec = "2048-2048"
    c.optimizer.lr_weights = 0.3
    c.optimizer.lr_biases = 0.3
    c.optimizer.eta = 0.02
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_epochs = 10
    c.optimizer.final_lr_fraction = 0.0
    return c
