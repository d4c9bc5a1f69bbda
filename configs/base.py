"""Base config every experiment overrides: the paper's Barlow Twins on ImageNet.

Every key that any experiment may set is declared here, so a typo such as
``--config.optimizer.lr_weight=...`` fails at once instead of being ignored.
"""

import ml_collections


def augment_view(*, flip=0.5, jitter=0.8, brightness=0.4, contrast=0.4, saturation=0.2,
                 hue=0.1, grayscale=0.2, blur=1.0, solarize=0.0):
    """Probabilities and strengths of one view's augmentations (FIELD_NOTES §3)."""
    return ml_collections.ConfigDict(dict(
        crop_scale=(0.08, 1.0), crop_ratio=(3.0 / 4.0, 4.0 / 3.0),
        flip_prob=flip, jitter_prob=jitter, brightness=brightness, contrast=contrast,
        saturation=saturation, hue=hue, grayscale_prob=grayscale, blur_prob=blur,
        blur_sigma=(0.1, 2.0), solarize_prob=solarize, solarize_threshold=0.5))


def get_config():
    c = ml_collections.ConfigDict()
    c.method = "barlow_twins"
    c.seed = 0
    c.batch_size = 2048          # global, in image pairs
    c.num_epochs = 1000
    c.num_train_steps = -1       # > 0 overrides num_epochs
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.eval_every_steps = 0       # kNN monitor period; 0 turns it off
    c.compute_dtype = "bfloat16"  # 'bfloat16' | 'float32'; parameters are float32

    c.model = ml_collections.ConfigDict(dict(
        name="resnet50", width=64, cifar_stem=False, zero_init_residual=True))
    # Projector: "Linear-BN-ReLU ... Linear" widths (FIELD_NOTES §1). last_bn_affine:
    # the final BN's parameters, 'scale_bias' | 'scale' (SimCLR) | 'none' (SimSiam).
    c.projector = ml_collections.ConfigDict(dict(
        spec="8192-8192-8192", hidden_bias=False, last_bias=False, last_bn=False,
        last_bn_affine="scale_bias"))
    # Predictor (BYOL, SimSiam); empty spec = none.
    c.predictor = ml_collections.ConfigDict(dict(
        spec="", hidden_bias=True, last_bias=True, last_bn=False, last_bn_affine="scale_bias"))

    c.loss = ml_collections.ConfigDict(dict(
        lambd=0.0051,                                      # Barlow Twins
        sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0,     # VICReg
        temperature=0.1,                                   # SimCLR
        ema_start=0.996, ema_end=1.0,                      # BYOL target EMA
    ))

    c.optimizer = ml_collections.ConfigDict(dict(
        name="lars",
        lr_weights=0.2, lr_biases=0.0048,  # per 256 image pairs (scaled by batch/256)
        scale_lr_by_batch=True,
        weight_decay=1.5e-6,               # the paper's value (main.py default: 1e-6)
        momentum=0.9, eta=0.001,
        warmup_epochs=10.0, final_lr_fraction=0.001,
        fix_predictor_lr=False,            # sgd only: predictor keeps the base lr (SimSiam)
    ))

    c.data = ml_collections.ConfigDict(dict(
        source="folder",        # 'folder' | 'tfds' | 'arrays' | 'synthetic'
        path="",                # folder source: directory or .tar/.tar.gz of <split>/<class>/*
        tfds_name="", tfds_data_dir="",
        split="train", eval_split="test",
        cache_dir="",           # where archives are extracted/indexed once ('' = ~/.cache/barlow_jax)
        placement="host",       # 'host' | 'split' | 'device'
        image_size=224,
        num_examples=0,         # synthetic source: train-set size
        num_eval_examples=0,
        num_classes=1000,
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        shuffle_buffer=16384, threads=0,  # 0 = tf.data AUTOTUNE
        augment=ml_collections.ConfigDict(dict(
            view1=augment_view(blur=1.0, solarize=0.0),
            view2=augment_view(blur=0.1, solarize=0.2))),
    ))
    # Arrays source: {'train': (images, labels), 'test': (...)} set in code.
    c.data.arrays = ml_collections.FieldReference(None, field_type=dict)

    c.eval = ml_collections.ConfigDict(dict(
        knn_k=200, knn_temperature=0.1, knn_train_examples=0, knn_test_examples=0,
        batch_size=256,
    ))
    return c
